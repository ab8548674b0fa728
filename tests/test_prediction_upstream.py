"""A `prediction` relayed to an OpenAI-style upstream: the credit hold covers its tokens (a bound from its bytes, as
the upstream's tokenizer is unknown), and the upstream's usage, which counts rejected prediction tokens as completion
tokens, is accepted as plausible up to max_tokens plus that bound."""

from __future__ import annotations

from types import MappingProxyType

from reverb.backends.upstream import wire
from reverb.backends.upstream.relay import Relay
from reverb.request import Ask
from reverb.types import Usage


def ask(**extra) -> Ask:
    return Ask(model="m", messages=(), extra=MappingProxyType({"messages": [{"role": "user", "content": "hi"}],
                                                                **extra}))


def test_the_bound_is_the_prediction_bytes():
    prediction = {"type": "content", "content": "déjà vu " * 10}
    assert wire.prediction_bound(ask(prediction=prediction)) >= len("déjà vu " * 10)
    assert wire.prediction_bound(ask()) == 0


def test_rejected_prediction_tokens_reported_by_the_upstream_are_plausible():
    relay = Relay("m", None, 1, 4, prompt_estimate=10, prompt_floor=2, prompt_bound=40, predicted=30)
    relay.admit({"choices": [{"index": 0, "delta": {"content": "abcd"}, "finish_reason": "stop"}]}, 80)
    assert relay.usage(Usage(12, 4 + 20)) == Usage(12, 24)        # 20 rejected prediction tokens: billed
    assert relay.usage(Usage(12, 4 + 31)) == Usage(12, relay.local().completion_tokens)   # beyond the bound
    plain = Relay("m", None, 1, 4, prompt_estimate=10, prompt_floor=2, prompt_bound=40)
    plain.admit({"choices": [{"index": 0, "delta": {"content": "abcd"}, "finish_reason": "stop"}]}, 80)
    assert plain.usage(Usage(12, 24)) == Usage(12, plain.local().completion_tokens)


def test_a_responses_prediction_reaches_the_upstream_and_its_bound():
    """A dialect translated into a chat body (the Responses API behind an upstream) carries the checked prediction,
    so the upstream gets it and the hold covers it."""
    from reverb.api import chatbody
    checked = Ask(model="m", messages=(), prediction="déjà vu " * 10)
    body = chatbody.request(checked)
    assert body["prediction"] == {"type": "content", "content": "déjà vu " * 10}
    assert wire.prediction_bound(ask(**body)) >= len("déjà vu " * 10)
    assert "prediction" not in chatbody.request(Ask(model="m", messages=()))
