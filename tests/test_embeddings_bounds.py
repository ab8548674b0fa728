"""Bounded embeddings through the service and the real llama backend over the fake engine (a chunk at a time):
caps before any hold, a bounded queue, a cancelled request billed for the chunks it computed. The real model and
server: test_embeddings_limits_e2e.py."""

from __future__ import annotations

import asyncio

import pytest

from reverb import service as service_mod
from reverb.errors import InvalidRequest, OverloadedError
from reverb.request import Ask, RequestContext
from reverb.settings import Settings

from .fakes import FakeEngine, fake_llama


class SlowEngine(FakeEngine):
    delay = 0.002    # per embeddings chunk of 4 tokens (and per decode call)


@pytest.fixture
def svc(tmp_path):
    cfg = Settings.build(environ={}, db=tmp_path / "l.db", api_keys=("k",), parallel=1, embedding_queue=1,
                         max_embedding_tokens=1000)
    s = service_mod.build(cfg, backend_factory=lambda spec, st: fake_llama(spec, st, SlowEngine))
    yield s
    assert s.ledger.invariant()["ok"]
    s.close()


def embed_ask(*texts: str) -> Ask:
    return Ask(model="smollm2-135m", messages=(), prompt=texts)


def ctx_of(svc) -> RequestContext:
    raw = svc.ledger.create_key(f"k{len(svc.ledger.list_keys())}", 1_000_000)
    return RequestContext(endpoint="embeddings", account=svc.ledger.authenticate(raw))


def test_too_many_tokens_is_refused_before_any_hold(svc):
    ctx = ctx_of(svc)
    with pytest.raises(InvalidRequest) as e:
        asyncio.run(svc.start_embedding(ctx, embed_ask("a" * 600, "b" * 600)))
    assert e.value.param == "input" and "1200 tokens" in str(e.value)
    assert svc.ledger.invariant()["holds"] == 0


def test_the_queue_is_bounded_and_a_cancelled_request_pays_for_what_it_computed(svc):
    first, second = ctx_of(svc), ctx_of(svc)

    async def go():
        emb = await svc.start_embedding(first, embed_ask("x" * 900))
        with pytest.raises(OverloadedError):                 # the queue holds one request: the next is 503
            await svc.start_embedding(second, embed_ask("hello"))
        assert svc.ledger.invariant()["holds"] == svc.registry.resolve("smollm2-135m").cost(900, 0)
        task = asyncio.ensure_future(emb.run())
        while emb._job.computed < 40:                        # it is computing, a chunk at a time
            await asyncio.sleep(0.005)
        emb.cancel()                                         # the client left
        with pytest.raises(OverloadedError):
            await task
        return await emb.settled

    settled = asyncio.run(go())
    row = svc.ledger.request(first.request_id)
    spec = svc.registry.resolve("smollm2-135m")
    assert row["status"] == "cancelled" and 40 <= row["prompt_tokens"] < 900
    assert row["price"] == settled.price == spec.cost(row["prompt_tokens"], 0)
    assert svc.ledger.invariant()["holds"] == 0

    async def again():                                       # the place in the queue was given back
        emb = await svc.start_embedding(second, embed_ask("hello", "world"))
        return await emb.run()
    vectors, usage, price = asyncio.run(again())
    assert len(vectors) == 2 and usage.prompt_tokens == 10 and price == spec.cost(10, 0)
