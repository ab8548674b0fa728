"""The service's own rules over the backend protocol (a fake backend, the real ledger): one hold per request,
settled once by the job's end with the real usage, one row per request whatever happened."""

from __future__ import annotations

import asyncio

import pytest

from reverb import service as service_mod
from reverb.errors import ContextLengthExceeded, EngineError, InsufficientCredit, InvalidRequest
from reverb.request import Ask, RequestContext
from reverb.settings import Settings
from reverb.types import Message, SamplingParams

from .fakes import FakeBackend


@pytest.fixture
def svc(tmp_path):
    backends = {}

    def factory(spec, settings):
        backends[spec.name] = FakeBackend(spec.name, ctx=64)
        return backends[spec.name]

    s = service_mod.build(Settings.build(environ={}, db=tmp_path / "l.db", api_keys=("k",)), backend_factory=factory)
    s.fake = backends["smollm2-135m"]
    yield s
    assert s.ledger.invariant()["ok"]
    s.close()


def ask(text="one two three", max_tokens=5) -> Ask:
    return Ask(model="smollm2-135m", messages=(Message("user", text),),
               sampling=SamplingParams(max_tokens=max_tokens))



def alice(svc, credit=1_000_000):
    raw = svc.ledger.create_key("alice", credit)
    return svc.ledger.authenticate(raw)


def test_a_served_request_is_charged_its_real_usage_and_logged_once(svc):
    acct = alice(svc)
    ctx = RequestContext(endpoint="chat.completions", account=acct)

    async def go():
        gen = await svc.start(ctx, ask(max_tokens=5))
        text, final = await gen.collect()
        return text, final, await gen.settled

    text, final, settled = asyncio.run(go())
    spec = svc.registry.resolve("smollm2-135m")
    assert final.usage.completion_tokens == 5 and final.usage.prompt_tokens == 3
    assert settled.price == spec.cost(3, 5)
    row = svc.ledger.request(ctx.request_id)
    assert row["status"] == "completed" and row["endpoint"] == "chat.completions"
    assert row["price"] == settled.price and row["completion_tokens"] == 5


def test_a_cancelled_request_pays_for_what_was_made(svc):
    ctx = RequestContext(account=alice(svc))

    async def go():
        gen = await svc.start(ctx, ask(max_tokens=50))
        await anext(gen)
        gen.cancel()
        _, final = await gen.collect()
        return final, await gen.settled

    final, settled = asyncio.run(go())
    row = svc.ledger.request(ctx.request_id)
    assert row["status"] == "cancelled" and 0 < row["completion_tokens"] < 50
    assert settled.price == svc.registry.resolve(None).cost(3, row["completion_tokens"])


def test_a_failed_job_is_logged_failed_with_its_code(svc):
    svc.fake.fail_with = EngineError("boom")
    ctx = RequestContext(account=alice(svc))

    async def go():
        gen = await svc.start(ctx, ask())
        await gen.collect()
        return await gen.settled

    asyncio.run(go())
    row = svc.ledger.request(ctx.request_id)
    assert row["status"] == "failed" and row["error_code"] == "engine_error"


def test_checks_before_any_hold(svc):
    """A small body is counted before the hold (milliseconds): its refusals are free, as is a key without credit."""
    acct = alice(svc, credit=1)
    with pytest.raises(ContextLengthExceeded):
        asyncio.run(svc.start(RequestContext(account=acct), ask(" ".join(["w"] * 64))))
    with pytest.raises(ContextLengthExceeded):
        asyncio.run(svc.start(RequestContext(account=acct), ask(max_tokens=62)))
    with pytest.raises(InsufficientCredit):
        asyncio.run(svc.start(RequestContext(account=acct), ask(max_tokens=60)))
    assert svc.ledger.list_keys()[0]["held"] == 0


HUGE = "x" * (service_mod.PREPARE_BEFORE_HOLD // 4 + 1)   # one word of the fake backend, past the size threshold


def test_a_huge_body_is_held_before_it_is_rendered_or_tokenized(svc, monkeypatch):
    prepared = []
    real = svc.fake.prepare
    monkeypatch.setattr(svc.fake, "prepare", lambda a: (prepared.append(a), real(a))[1])
    broke = alice(svc, credit=0)
    with pytest.raises(InsufficientCredit):
        asyncio.run(svc.start(RequestContext(account=broke), ask(HUGE)))
    assert prepared == []
    rich = svc.ledger.authenticate(svc.ledger.create_key("bob", 1_000_000))
    spec = svc.registry.resolve("smollm2-135m")
    ctx = RequestContext(account=rich)
    with pytest.raises(ContextLengthExceeded) as e:  # counted after the hold: 65 words, in a 64-token context
        asyncio.run(svc.start(ctx, ask(HUGE + " w" * 64)))
    assert e.value.settled  # its row is written: the HTTP layer does not write another
    row = svc.ledger.request(ctx.request_id)
    assert row["status"] == "rejected" and row["error_code"] == "context_length_exceeded"
    assert row["prompt_tokens"] == 65 and row["price"] == spec.cost(65, 0)
    ctx = RequestContext(account=rich)
    got = asyncio.run(_served(svc, ctx, ask(HUGE, max_tokens=None)))  # the hold grew from the bound to the worst case
    assert got == (1, 63) and svc.ledger.request(ctx.request_id)["price"] == spec.cost(1, 63)
    assert all(k["held"] == 0 for k in svc.ledger.list_keys())


async def _served(svc, ctx, a) -> tuple[int, int]:
    gen = await svc.start(ctx, a)
    _, final = await gen.collect()
    await gen.settled
    return final.usage.prompt_tokens, final.usage.completion_tokens


def test_the_grammar_is_compiled_only_under_a_hold_and_a_costly_one_pays_its_prompt(svc, monkeypatch):
    from reverb.errors import GrammarTooCostly
    compiled = []

    async def compile_(prompt, a):
        compiled.append(a)
        e = GrammarTooCostly("too costly", param="response_format.json_schema.schema.properties.x")
        e.prompt_tokens = prompt.counts.n_tokens
        raise e
    monkeypatch.setattr(svc.fake, "compile", compile_, raising=False)
    costly = ask()
    with pytest.raises(InsufficientCredit):
        asyncio.run(svc.start(RequestContext(account=alice(svc, credit=0)), costly))
    assert compiled == []
    ctx = RequestContext(account=svc.ledger.authenticate(svc.ledger.create_key("bob", 1_000_000)))
    with pytest.raises(GrammarTooCostly) as e:
        asyncio.run(svc.start(ctx, costly))
    assert e.value.settled and len(compiled) == 1
    row = svc.ledger.request(ctx.request_id)
    spec = svc.registry.resolve("smollm2-135m")
    assert row["status"] == "rejected" and row["error_code"] == "grammar_too_costly"
    assert row["prompt_tokens"] == 3 and row["price"] == spec.cost(3, 0)
    assert all(k["held"] == 0 for k in svc.ledger.list_keys())


def test_a_refusal_is_one_row_under_its_endpoint_name(svc):
    ctx = RequestContext(endpoint="gateway", dialect="gateway")
    asyncio.run(svc.reject(ctx, InvalidRequest("bad", param="messages")))
    row = svc.ledger.request(ctx.request_id)
    assert row["status"] == "rejected" and row["endpoint"] == "gateway" and row["error_code"] == "invalid_request"


def test_a_stream_records_its_delivered_mark_at_a_bounded_rate(svc, monkeypatch):
    acct = alice(svc)
    marks = []
    real = svc.ledger.progress
    monkeypatch.setattr(svc.ledger, "progress", lambda rid, n: (marks.append(n), real(rid, n)))

    async def go():
        gen = await svc.start(RequestContext(account=acct), Ask(model="smollm2-135m", stream=True,
                              messages=(Message("user", "go"),), sampling=SamplingParams(max_tokens=40)))
        await gen.collect()
        return await gen.settled

    asyncio.run(go())
    # the first token is recorded at once; later ones at most once a second, so 40 fast tokens give very few
    assert marks and marks[0] == 1 and len(marks) < 40 and marks == sorted(marks)


def test_a_client_process_takes_no_lease_and_settles_nothing(tmp_path):
    from reverb.ledger import Ledger
    db = tmp_path / "shared.db"
    with Ledger(db) as dead:                     # a server that died with a hold open, its lease expired
        dead.lease.register(60)
        acct = dead.authenticate(dead.create_key("bob", 100))
        dead.reserve(acct, "orphan", 50, "m", "gateway")
        dead.engine.write(lambda d: d.execute("UPDATE instances SET lease_until = 0"))
    settings = Settings.build(environ={}, db=db, api_keys=("k",))
    client = service_mod.build(settings, backend_factory=lambda spec, s: FakeBackend(spec.name), serve=False)
    try:
        assert client.ledger.lease.instance_id is None
        assert [h["request_id"] for h in client.ledger.holds()] == ["orphan"]
    finally:
        client.close()
    with Ledger(db) as led:
        assert led.holds() != []                 # closing a client settled nothing either
    server = service_mod.build(settings, backend_factory=lambda spec, s: FakeBackend(spec.name))
    try:
        assert server.ledger.holds() == [] and server.ledger.request("orphan")["error_code"] == "interrupted"
    finally:
        server.close()


def test_a_missing_ledger_is_an_error_for_a_client_process(tmp_path):
    from reverb.errors import ConfigError
    settings = Settings.build(environ={}, db=tmp_path / "nope" / "l.db")
    with pytest.raises(ConfigError, match="no ledger"):
        service_mod.build(settings, backend_factory=lambda spec, s: FakeBackend(spec.name), serve=False)
    assert not (tmp_path / "nope").exists()
