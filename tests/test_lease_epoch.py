"""How a server learns that its lease was lost (on both ledger engines): a renewal or a hold that finds its
instance swept registers it again and raises ``epoch``; ``live()`` says whether the lease surely holds. The service
ends requests held under an older epoch (test_lease_lost_e2e.py)."""

from __future__ import annotations

from reverb.ledger import Ledger


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
