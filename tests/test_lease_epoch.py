"""How a server learns that its lease was lost (on both ledger engines): a renewal or a hold that finds its
instance swept registers it again and raises ``epoch``; ``live()`` says whether the lease surely holds. The service
ends requests held under an older epoch; a stream hands out nothing more (here over a fake backend, and in
test_lease_lost_e2e.py on real servers)."""

from __future__ import annotations

import asyncio

import pytest

from reverb import service as service_mod
from reverb.errors import LedgerError
from reverb.ledger import Ledger
from reverb.request import Ask, RequestContext
from reverb.settings import Settings
from reverb.types import Message, SamplingParams

from .fakes import FakeBackend


def expire(ledger: Ledger) -> None:
    ledger.engine.write(lambda db: db.execute("UPDATE instances SET lease_until = 0 WHERE id = ?",
                                              (ledger.lease.instance_id,)))


def test_a_swept_server_learns_it_on_its_next_renewal_or_hold(db_target):
    with Ledger(db_target) as frozen, Ledger(db_target) as other:
        frozen.lease.register(60)
        other.lease.register(60)
        acct = frozen.authenticate(frozen.create_key("a", 10_000))
        assert frozen.reserve(acct, "old", 100, "m", "gateway").epoch == 0 and frozen.lease.live()
        assert frozen.lease.heartbeat() is False and frozen.lease.epoch == 0
        expire(frozen)                                  # frozen past its lease...
        frozen.lease.valid_until = 0.0                  # ...as its own clock also knows
        assert not frozen.lease.live()
        assert other.lease.sweep() == 1                 # ...and swept
        assert frozen.lease.heartbeat() is True and frozen.lease.epoch == 1 and frozen.lease.live()
        assert frozen.lease.heartbeat() is False and frozen.lease.epoch == 1
        assert frozen.reserve(acct, "new", 100, "m", "gateway").epoch == 1   # a new hold belongs to the new epoch

        expire(frozen)
        assert other.lease.sweep() == 1                 # "new" is swept too
        assert frozen.reserve(acct, "newer", 100, "m", "gateway").epoch == 2  # a hold can be the one that finds out
        assert [h["request_id"] for h in frozen.holds()] == ["newer"]
        assert frozen.lease.retire() == 1 and frozen.invariant()["ok"]


def test_a_late_renewal_that_was_not_swept_keeps_its_holds(db_target):
    with Ledger(db_target) as led:
        led.lease.register(60)
        acct = led.authenticate(led.create_key("a", 10_000))
        led.reserve(acct, "held", 100, "m", "gateway")
        expire(led)                                     # late, but nobody swept
        assert led.lease.heartbeat() is False and led.lease.epoch == 0
        assert led.holds() and led.lease.retire() == 1 and led.invariant()["ok"]


def test_a_process_without_a_lease_is_always_live(db_target):
    with Ledger(db_target) as led:
        assert led.lease.live() and led.lease.heartbeat() is False


def test_a_stream_whose_hold_was_swept_hands_out_nothing_more(tmp_path):
    """The service's side, over a fake backend: once the lease is not known to hold, the next piece of output
    waits for a renewal; the renewal finds the server swept, and the stream ends with the lease error."""
    db = tmp_path / "l.db"
    svc = service_mod.build(Settings.build(environ={}, db=db, api_keys=("k",)),
                            backend_factory=lambda spec, s: FakeBackend(spec.name, ctx=100_000))
    try:
        acct = svc.ledger.authenticate(svc.ledger.create_key("alice", 10**9))
        ctx = RequestContext(endpoint="chat.completions", account=acct)
        ask = Ask(model="smollm2-135m", messages=(Message("user", "tell me"),), stream=True,
                  sampling=SamplingParams(max_tokens=50_000))

        async def go():
            gen = await svc.start(ctx, ask)
            first = await anext(gen)
            assert first.text
            with Ledger(db) as other:                  # frozen past the lease, and swept
                other.lease.register(60)
                expire(svc.ledger)
                svc.ledger.lease.valid_until = 0.0
                assert other.lease.sweep() == 1
                rest = [chunk async for chunk in gen]
                other.lease.retire()
            with pytest.raises(LedgerError):
                await gen.settled
            return rest

        rest = asyncio.run(go())
        assert not any(c.text for c in rest) and "lost its lease" in str(rest[-1].error)
        assert svc.ledger.lease.epoch == 1 and not svc.settlement.live
        svc.settlement.retry()                         # the failed settlement is dropped: the sweep's row is the bill
        row = svc.ledger.request(ctx.request_id)
        assert (row["status"], row["error_code"]) == ("failed", "interrupted") and not svc.settlement._unsettled
        assert svc.ledger.invariant()["ok"]
    finally:
        svc.close()
