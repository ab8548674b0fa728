"""The streaming response at its ASGI seam: a client whose socket never drains is aborted after the write timeout,
and the job is cancelled (its slot freed, billed for what was made). The real service, batcher and ledger run;
the engine is the fake, slowed down so a generation outlasts the timeout."""

from __future__ import annotations

import asyncio

from reverb import service as service_mod
from reverb.api.stream import GenerationResponse
from reverb.request import Account, Ask, RequestContext
from reverb.settings import Settings
from reverb.types import FinishReason, Message, SamplingParams

from .fakes import EOS, FakeEngine, fake_llama


class SlowEngine(FakeEngine):
    delay = 0.005


def test_write_timeout_aborts_and_cancels(tmp_path):
    cfg = Settings.build(environ={}, db=tmp_path / "l.db", api_keys=("k",), parallel=1)
    svc = service_mod.build(cfg, backend_factory=lambda spec, s: fake_llama(spec, s, SlowEngine))

    async def run():
        ctx = RequestContext(request_id="req_t", endpoint="chat.completions",
                             account=Account("k", None, unlimited=True))
        ask = Ask(model=None, messages=(Message("user", "hi"),),
                  sampling=SamplingParams(logit_bias=((EOS, -100.0),), max_tokens=1900))
        gen = await svc.start(ctx, ask)
        sent = []

        async def send(message):  # the first body write never completes: a client that does not read
            sent.append(message)
            if message["type"] == "http.response.body":
                await asyncio.sleep(3600)

        async def receive():
            await asyncio.sleep(3600)

        async def body(first):
            yield first.text.encode()
            async for chunk in gen:
                yield chunk.text.encode()

        resp = GenerationResponse(gen, media_type="text/plain", body=body, on_early_error=None, headers={},
                                  write_timeout=0.3)
        await resp({"type": "http"}, receive, send)
        price = (await gen.settled).price
        return gen, price, sent

    gen, price, sent = asyncio.run(run())
    # the response gave up on the client and cancelled the job before its 1900 tokens were made
    assert gen.final.finish_reason is FinishReason.CANCELLED
    assert 0 < gen.final.usage.completion_tokens < 1900
    assert svc.ledger.request("req_t")["status"] == "cancelled"
    assert sent[0]["type"] == "http.response.start"
    svc.close()
