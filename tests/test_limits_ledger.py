"""Limits, budgets, teams and allowlists in the ledger (issue 25), on both engines where it matters.

Exactness is a property over a fake clock: random arrivals, sizes and settlements are checked against a reference
sliding window; the ledger admits a request exactly when the reference has room, and its Retry-After is exactly when
the room appears. Concurrency: 20 threads over two ledgers on one database for each limit.
"""

from __future__ import annotations

import concurrent.futures
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reverb.errors import AuthenticationError, BudgetExceeded, ConfigError, InsufficientCredit, RateLimited
from reverb.ledger import Ledger, RequestRecord
from reverb.ledger import periods
from reverb.request import Account

T0 = 1_800_000_000_000   # ms: a fixed fake "now"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


class Clock:
    def __init__(self, t: int = T0):
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def ledger(db_target):
    with Ledger(db_target) as led:
        led.lease.register(600)
        led.clock = Clock()
        yield led
        assert led.invariant()["ok"], led.invariant()


def rec(rid: str, prompt: int = 0, completion: int = 0, status: str = "completed") -> RequestRecord:
    return RequestRecord(rid, "chat.completions", "m", status, prompt, completion)


# -- exactness as a property --------------------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("arrive"), st.integers(1, 40)),           # tokens reserved (prompt + max_tokens)
    st.tuples(st.just("settle"), st.integers(0, 100)),          # settle the oldest open request; % of its tokens used
    st.tuples(st.just("wait"), st.integers(1, 30_000)),         # ms
), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, rpm=st.integers(1, 6), tpm=st.integers(40, 120), par=st.integers(1, 4))
def test_window_admits_exactly_when_there_is_room(tmp_path_factory, ops, rpm, tpm, par):
    """Never over a limit, never refused while there was room, Retry-After exactly when room appears."""
    with Ledger(tmp_path_factory.mktemp("p") / "l.db") as led:
        led.lease.register(600)
        clock = led.clock = Clock()
        acct = led.authenticate(led.create_key("k", 10**9, rpm=rpm, tpm=tpm, max_parallel=par))
        events: dict[str, list] = {}      # rid -> [at, tokens] (the reference window's log)
        open_: list[str] = []

        def room(at: int, tokens: int, running: int) -> tuple[bool, bool]:
            window = [e for e in events.values() if e[0] > at - 60_000]
            rate_ok = len(window) + 1 <= rpm and sum(e[1] for e in window) + tokens <= tpm
            return rate_ok, running < par

        for n, (op, value) in enumerate(ops):
            if op == "wait":
                clock.t += value
            elif op == "settle" and open_:
                rid = open_.pop(0)
                used = events[rid][1] * value // 100
                led.settle(acct, rec(rid, used, 0), 1)
                events[rid][1] = used
            elif op == "arrive":
                rid = f"r{n}"
                rate_ok, par_ok = room(clock.t, value, len(open_))
                try:
                    got = led.reserve(acct, rid, 1, "m", "chat", 0, (0, 0), tokens=value)
                except RateLimited as e:
                    assert not (rate_ok and par_ok), "refused while there was room"
                    if par_ok and value <= tpm:   # a rate refusal: room appears exactly after Retry-After
                        wait = round(e.retry_after * 1000)
                        assert room(clock.t + wait, value, 0)[0]
                        assert wait == 0 or not room(clock.t + wait - 1, value, 0)[0]
                    continue
                assert rate_ok and par_ok, "admitted over a limit"
                events[rid] = [clock.t, value]
                open_.append(rid)
                window = [e for e in events.values() if e[0] > clock.t - 60_000]
                assert got.limits["requests"][:2] == (rpm, rpm - len(window))
                assert got.limits["tokens"][:2] == (tpm, tpm - sum(e[1] for e in window))
        assert led.invariant()["ok"]


team_ops = st.lists(st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 1), st.integers(1, 40), st.integers(1, 6)),   # key, tokens, hold
    st.tuples(st.just("settle"), st.integers(0, 100), st.integers(0, 100), st.just(0)),       # % tokens, % charge
    st.tuples(st.just("wait"), st.integers(1, 30_000), st.just(0), st.just(0)),
), min_size=1, max_size=50)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=team_ops, key_rpm=st.integers(1, 5), team_rpm=st.integers(1, 8), team_tpm=st.integers(40, 150),
       team_par=st.integers(1, 4), team_credit=st.integers(5, 60))
def test_two_keys_in_a_team_never_pass_either_limit(tmp_path_factory, ops, key_rpm, team_rpm, team_tpm, team_par,
                                                    team_credit):
    """Key and team windows, the team's concurrency and credit: admitted exactly when every one has room."""
    with Ledger(tmp_path_factory.mktemp("t") / "l.db") as led:
        led.lease.register(600)
        clock = led.clock = Clock()
        led.create_team("t", team_credit, rpm=team_rpm, tpm=team_tpm, max_parallel=team_par)
        accts = [led.authenticate(led.create_key(f"k{i}", 10**9, team="t", rpm=key_rpm)) for i in range(2)]
        events: dict[str, list] = {}      # rid -> [at, tokens, key index, hold]
        open_: list[str] = []
        balance = team_credit

        for n, (op, a, b, c) in enumerate(ops):
            if op == "wait":
                clock.t += a
            elif op == "settle" and open_:
                rid = open_.pop(0)
                at, tokens, k, hold = events[rid]
                used, charge = tokens * a // 100, hold * b // 100
                led.settle(accts[k], rec(rid, used, 0), charge)
                events[rid][1] = used
                balance += hold - charge
            elif op == "arrive":
                rid, k, tokens, hold = f"r{n}", a, b, c
                window = [e for e in events.values() if e[0] > clock.t - 60_000]
                mine = [e for e in window if e[2] == k]
                ok = (len(mine) + 1 <= key_rpm and len(window) + 1 <= team_rpm
                      and sum(e[1] for e in window) + tokens <= team_tpm and len(open_) < team_par
                      and hold <= balance)
                try:
                    led.reserve(accts[k], rid, hold, "m", "chat", 0, (0, 0), tokens=tokens)
                except (RateLimited, InsufficientCredit):
                    assert not ok, "refused while there was room"
                    continue
                assert ok, "admitted over a limit"
                events[rid] = [clock.t, tokens, k, hold]
                open_.append(rid)
                balance -= hold
        assert led.show_team("t")["balance"] == balance and led.invariant()["ok"]


def test_a_refused_request_changes_no_counter(ledger):
    acct = ledger.authenticate(ledger.create_key("k", 100, rpm=1, tpm=10, max_parallel=1))
    ledger.reserve(acct, "a", 10, "m", "chat", tokens=5)
    before = (ledger.invariant(), ledger.show_key("k")["usage"])
    for amount, tokens in ((10, 1), (1000, 1), (1, 50)):
        with pytest.raises((RateLimited, InsufficientCredit)):
            ledger.reserve(acct, "b", amount, "m", "chat", tokens=tokens)
    assert (ledger.invariant(), ledger.show_key("k")["usage"]) == before
    # a request refused after its hold (e.g. overloaded) leaves the window as if it never came
    ledger.settle(acct, rec("a", status="rejected"), 0)
    assert ledger.show_key("k")["usage"]["requests_last_minute"] == 0


def test_a_request_larger_than_the_tokens_limit_is_never_retryable(ledger):
    acct = ledger.authenticate(ledger.create_key("k", 100, tpm=10))
    with pytest.raises(RateLimited) as e:
        ledger.reserve(acct, "a", 1, "m", "chat", tokens=11)
    assert e.value.retry_after is None and "max_tokens" in e.value.message


# -- teams: the tighter wins ----------------------------------------------------------------------------------------

def test_team_limits_credit_and_budget_bind_every_key(ledger):
    ledger.create_team("t", 50, rpm=3, budget=40, period="day")
    a = ledger.authenticate(ledger.create_key("a", 1000, team="t"))
    b = ledger.authenticate(ledger.create_key("b", 1000, team="t", rpm=1))
    ledger.reserve(b, "b1", 10, "m", "chat")
    with pytest.raises(RateLimited, match="key 'b'"):          # the key's own limit is tighter
        ledger.reserve(b, "b2", 10, "m", "chat")
    ledger.reserve(a, "a1", 10, "m", "chat")
    got = ledger.reserve(a, "a2", 10, "m", "chat")
    assert got.limits["requests"][:2] == (3, 0)                         # the team's window: 3 of 3 used
    with pytest.raises(RateLimited, match="team 't'"):
        ledger.reserve(a, "a3", 10, "m", "chat")
    ledger.clock.t += 60_000
    with pytest.raises(BudgetExceeded, match="team 't'.s day budget of 0.00004 has 0.00001 left") as e:
        ledger.reserve(a, "a4", 11, "m", "chat")                # 30 held of the budget's 40
    assert "resets at" in e.value.message
    for rid, who in (("b1", b), ("a1", a), ("a2", a)):
        ledger.settle(who, rec(rid), 5)                          # 15 charged, 15 refunded to key and team
    assert ledger.show_team("t")["balance"] == 35
    with pytest.raises(InsufficientCredit, match="team 't' has 0.000035 left"):
        ledger.reserve(a, "a5", 36, "m", "chat")
    ledger.reserve(a, "a5", 25, "m", "chat")                     # budget: 15 + 25 = 40
    ledger.settle(a, rec("a5"), 25)
    assert ledger.invariant()["ok"]


def test_raising_a_hold_obeys_the_key_and_team_credit_and_budget(ledger):
    """A large body is held first for what its size bounds, then raised to its counted worst case
    (service._start): the raise is checked like a hold, and a refused raise changes nothing."""
    ledger.create_team("t", 100, budget=60, period="day")
    a = ledger.authenticate(ledger.create_key("a", 1000, team="t", budget=50, period="day"))
    ledger.reserve(a, "r", 30, "m", "chat")
    with pytest.raises(BudgetExceeded, match="key 'a'"):
        ledger.raise_hold(a, "r", 21, 7)                         # 30 + 21 > the key's 50
    before = (ledger.invariant(), ledger.show_key("a")["balance"], ledger.show_team("t")["balance"])
    assert before[1:] == (970, 70)
    ledger.raise_hold(a, "r", 20, 7)                              # 50: both budgets still hold it
    assert (ledger.show_key("a")["balance"], ledger.show_team("t")["balance"]) == (950, 50)
    b = ledger.authenticate(ledger.create_key("b", 1000, team="t"))
    ledger.reserve(b, "s", 5, "m", "chat")
    with pytest.raises(BudgetExceeded, match="team 't'"):
        ledger.raise_hold(b, "s", 6, 1)                           # 50 + 5 + 6 > the team's 60
    ledger.settle(a, rec("r", 7, 1), 10)
    ledger.settle(b, rec("s", 1, 1), 2)
    assert ledger.invariant()["ok"] and ledger.show_team("t")["balance"] == 88


def test_a_dead_servers_team_hold_is_refunded_to_the_team(db_target):
    with Ledger(db_target) as led:
        led.lease.register(600)
        led.create_team("t", 100)
        a = led.authenticate(led.create_key("a", 100, team="t"))
        led.reserve(a, "r", 60, "m", "chat")
        assert led.show_team("t")["balance"] == 40
        led.lease.retire()                                       # settles its holds by the crash rule
        assert led.show_team("t")["balance"] == 100 and led.invariant()["ok"]


# -- budgets over calendar periods --------------------------------------------------------------------------------

@pytest.mark.parametrize("now, period, tz, start, end", [
    ("2027-01-31T23:59:59", "month", None, "2027-01-01T00:00:00", "2027-02-01T00:00:00"),
    ("2028-02-29T12:00:00", "month", None, "2028-02-01T00:00:00", "2028-03-01T00:00:00"),   # leap year
    ("2028-02-29T12:00:00", "day", None, "2028-02-29T00:00:00", "2028-03-01T00:00:00"),     # leap day
    ("2027-12-31T23:30:00", "month", "Europe/Paris", "2027-12-31T23:00:00", "2028-01-31T23:00:00"),
    ("2027-03-01T03:00:00", "month", "America/New_York", "2027-02-01T05:00:00", "2027-03-01T05:00:00"),
    ("2027-03-26T12:00:00", "week", "Europe/Paris", "2027-03-21T23:00:00", "2027-03-28T22:00:00"),  # DST week
    ("2027-01-03T12:00:00", "week", None, "2026-12-28T00:00:00", "2027-01-04T00:00:00"),    # Sunday: Monday weeks
])
def test_period_bounds(now, period, tz, start, end):
    first, after = periods.bounds(ms(now), period, tz)
    assert (periods.iso(first)[:19], periods.iso(after)[:19]) == (start, end)


def test_a_month_budget_resets_at_the_months_end_in_its_zone(ledger):
    acct = ledger.authenticate(ledger.create_key("k", 1000, budget=30, period="month", tz="America/New_York"))
    ledger.clock.t = ms("2028-02-29T23:00:00")      # New York: Feb 29, 18:00
    ledger.reserve(acct, "a", 20, "m", "chat")
    ledger.settle(acct, rec("a"), 20)
    with pytest.raises(BudgetExceeded, match=r"month budget of 0.00003 has 0.00001 left \(it resets at "
                                             r"2028-03-01T05:00:00Z\)"):
        ledger.reserve(acct, "b", 20, "m", "chat")
    ledger.clock.t = ms("2028-03-01T04:59:59")      # still February in New York
    with pytest.raises(BudgetExceeded):
        ledger.reserve(acct, "b", 20, "m", "chat")
    ledger.clock.t = ms("2028-03-01T05:00:00")      # March: a new budget, with no reset job
    ledger.reserve(acct, "b", 20, "m", "chat")
    ledger.settle(acct, rec("b"), 20)
    assert ledger.show_key("k")["usage"]["budget"]["left"] == 10


def test_expired_keys_are_refused(ledger):
    raw = ledger.create_key("old", 10, expires="2020-01-01")
    with pytest.raises(AuthenticationError, match="expired at 2020-01-02T00:00:00Z"):
        ledger.authenticate(raw)
    assert ledger.authenticate(ledger.create_key("new", 10, expires="2999-01-01")).name == "new"
    with pytest.raises(ConfigError):
        ledger.create_key("bad", 10, expires="soon")


# -- keys: names, rotation, settings --------------------------------------------------------------------------------

def test_revoked_names_are_reusable_and_rotation_keeps_everything(ledger):
    old = ledger.create_key("a", 10)
    ledger.revoke("a")
    new = ledger.create_key("a", 5, rpm=7)
    assert ledger.authenticate(old) is None and ledger.authenticate(new).name == "a"
    rotated = ledger.rotate("a")
    assert ledger.authenticate(new) is None and ledger.authenticate(rotated).name == "a"
    shown = ledger.show_key("a")
    assert (shown["balance"], shown["rpm"]) == (5, 7)
    assert [k["name"] for k in ledger.list_keys()] == ["a", "a"]
    assert [a["action"] for a in ledger.admin_log()] == ["key.rotate", "key.create", "key.revoke", "key.create"]
    with pytest.raises(ConfigError):
        ledger.update_key("a", rpm=0)
    with pytest.raises(ConfigError):
        ledger.update_key("a", team="nobody")
    with pytest.raises(ConfigError):
        ledger.update_key("a", period="year")
    with pytest.raises(ConfigError):
        ledger.update_key("a", tz="Mars/Olympus")


def test_allowlists():
    def acct(*lists):
        return Account("a", 1, allowlists=lists)
    assert not acct(()).may_use("smollm2-135m")                       # empty: nothing
    assert acct(("*",)).may_use("anything")
    assert acct(("smollm2-*",)).may_use("smollm2-135m") and not acct(("smollm2-*",)).may_use("qwen")
    assert not acct(("*",), ("qwen*",)).may_use("smollm2-135m")       # the team's list binds the key too
    assert acct(("smollm2-135m", "qwen*"), ("*",)).may_use("qwen2")
    assert Account("dev", None, unlimited=True).may_use("x")


def test_migrated_and_new_keys_allow_every_model(ledger):
    raw = ledger.create_key("k", 1)
    assert ledger.authenticate(raw).allowlists == (("*",),)
    ledger.create_team("t", models=["a", "b*"])
    ledger.update_key("k", team="t", models=[])
    assert ledger.authenticate(raw).allowlists == ((), ("a", "b*"))


# -- 20 concurrent requests over two ledgers on one database, for each limit -------------------------------------

@pytest.mark.parametrize("limit, settings_, amount, tokens, admitted", [
    ("rpm", {"rpm": 5}, 1, 1, 5),
    ("tpm", {"tpm": 50}, 1, 10, 5),
    ("max_parallel", {"max_parallel": 3}, 1, 1, 3),
    ("budget", {"budget": 70, "period": "day"}, 10, 1, 7),
    ("team rpm", {"team": "t"}, 1, 1, 4),
])
def test_twenty_concurrent_requests_on_two_ledgers_never_pass_a_limit(db_target, limit, settings_, amount,
                                                                       tokens, admitted):
    with Ledger(db_target) as a, Ledger(db_target) as b:
        for led in (a, b):
            led.lease.register(600)
        a.create_team("t", rpm=4)
        acct = a.authenticate(a.create_key("k", 10**6, **settings_))

        def call(i):
            try:
                (a if i % 2 else b).reserve(acct, f"r{i}", amount, "m", "chat", tokens=tokens)
                return True
            except (RateLimited, InsufficientCredit):
                return False

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(call, range(20)))
        assert sum(results) == admitted, limit
        for i, ok in enumerate(results):
            if ok:
                a.settle(acct, rec(f"r{i}"), amount)
        assert a.invariant()["ok"]
