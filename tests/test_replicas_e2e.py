"""Several servers on one ledger, on one SQLite file and on PostgreSQL: real servers, the real model.

No credit is ever overspent across servers; a server that dies (kill -9) mid-stream has its hold settled by
another once its lease expires, charged for what it delivered, while the other's stream and hold are untouched;
processes that only read never settle anything. Waits are polls with generous deadlines, never sleeps.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import pytest

from reverb.ledger import Ledger
from reverb.models import registry

from .conftest import ROOT, Server, server_pair, chat, prompt_tokens, reverb, wait_for

SPEC = registry.load(ROOT / "models.toml").resolve("smollm2-135m")
LEASE = "2"   # seconds: short, so a dead server's holds are settled soon; renewed every 2/3 s
ONE = ("--threads", "1")   # two servers on two cores: one thread each keeps llama.cpp from oversubscribing


def new_key(target: str, name: str, credit: int) -> str:
    """A key made in-process (``credit`` in micro-units): `keys create` on both engines is tested in
    test_keys_cli.py, and a CLI process here cost ~0.7 s of CPU a test."""
    with Ledger(target, create=False) as ledger:
        return ledger.create_key(name, credit)


def poll(condition, what: str, timeout: float = 120):
    return wait_for(condition, timeout=timeout, what=what, interval=0.1)   # each poll opens the ledger


def hold_of(target: str, request_id: str) -> dict | None:
    with Ledger(target, create=False) as ledger:
        return next((h for h in ledger.holds() if h["request_id"] == request_id), None)


def row_of(target: str, request_id: str) -> dict | None:
    with Ledger(target, create=False) as ledger:
        return ledger.request(request_id)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def two_servers(request, tmp_path_factory):
    """Two servers on one fresh ledger, per engine, for the credit race and then the kill -9 (which kills A, so it
    comes last: pytest runs a module fixture's tests in file order); each test makes keys of its own. Two server
    starts fewer per engine (~1.3 s of CPU each). The ledger's invariant is checked once both have stopped."""
    yield from server_pair(request, tmp_path_factory, "--lease-seconds", LEASE, *ONE, no_holds=True)


def alive(*servers: Server) -> None:
    for srv in servers:
        assert srv.proc.poll() is None, "a test before this one stopped a server of the pair"
        srv.wait_idle()


def test_credit_race_spread_over_two_servers(two_servers, engine, no_eos):
    """20 requests at once, alternating between two servers on one ledger: exactly the affordable 5 run."""
    a, b, db_target = two_servers
    alive(a, b)
    body = chat("Count.", max_tokens=4, logit_bias=no_eos)   # no end token: each is charged its whole hold
    hold = SPEC.cost(prompt_tokens(engine, body["messages"]), 4)
    key = new_key(db_target, "racer", 5 * hold)
    # one client per server, shared by the threads (each its own connection): 20 clients cost ~0.5 s of CPU
    with a.client(key, timeout=600) as http_a, b.client(key, timeout=600) as http_b:
        def call(i):
            return (http_a if i % 2 else http_b).post("/v1/chat/completions", json=body).status_code

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(call, range(20)))
    assert sorted(codes) == [200] * 5 + [429] * 15, codes
    with Ledger(db_target, create=False) as ledger:
        racer = [k for k in ledger.list_keys() if k["name"] == "racer"][0]
        assert racer["balance"] == 0 and racer["held"] == 0 and ledger.invariant()["ok"]
        usage = ledger.usage(key="racer")
        assert [sum(u[k] for u in usage) for k in ("completed", "rejected", "price")] == [5, 15, 5 * hold]


def test_kill_9_of_one_server_mid_stream_while_the_other_streams(two_servers, no_eos):
    a, b, db_target = two_servers
    alive(a, b)
    key = new_key(db_target, "streamer", 1_000_000)
    with a.client(key, timeout=600) as http_a, b.client(key, timeout=600) as http_b:
        with http_a.stream("POST", "/v1/chat/completions",
                           json=chat("Write a long story.", max_tokens=1500, stream=True, logit_bias=no_eos)) as ra:
            rid_a = ra.headers["x-request-id"]
            lines_a = ra.iter_lines()   # kept: a dropped iterator closes the connection, and the server cancels
            next(lines_a)
            # A has delivered tokens and recorded a high-water mark on its hold
            poll(lambda: (hold_of(db_target, rid_a) or {}).get("delivered_tokens"), "a's delivered-token mark")
            # B starts only now, so that it is streaming when A dies (it need not run long before that)
            rb = http_b.send(http_b.build_request("POST", "/v1/chat/completions", json=chat(
                "Write a story.", max_tokens=100, stream=True, logit_bias=no_eos)), stream=True)
            rid_b = rb.headers["x-request-id"]
            lines_b = rb.iter_lines()
            first_b = next(lines_b)
            a.kill()
            mark = hold_of(db_target, rid_a)["delivered_tokens"]   # final: nothing writes it any more
            swept = poll(lambda: row_of(db_target, rid_a), "the dead server's hold to be settled")
            if row_of(db_target, rid_b) is None:                    # B still streaming: its hold is intact
                assert hold_of(db_target, rid_b) is not None
            rest_b = [first_b, *lines_b]
            rb.close()
    assert "data: [DONE]" in rest_b                                 # B's stream was never disturbed
    done_b = poll(lambda: row_of(db_target, rid_b), "b's row")
    assert done_b["status"] == "completed" and done_b["completion_tokens"] == 100
    assert done_b["price"] == SPEC.cost(done_b["prompt_tokens"], 100)
    assert (swept["status"], swept["error_code"]) == ("failed", "interrupted")
    assert swept["completion_tokens"] == mark > 0                  # settled like a disconnect: what it delivered
    assert swept["price"] == SPEC.cost(swept["prompt_tokens"], mark) > 0
    with Ledger(db_target, create=False) as ledger:
        streamer = [k for k in ledger.list_keys() if k["name"] == "streamer"][0]
        assert streamer["held"] == 0 and streamer["balance"] == 1_000_000 - swept["price"] - done_b["price"]


def test_read_only_commands_never_settle_a_hold(make_server, db_target, no_eos):
    """A dead server's hold, its lease expired: keys list, usage and chat leave it alone; a server settles it."""
    srv = make_server("--lease-seconds", "1", *ONE, db=db_target)
    key = new_key(db_target, "reader", 1_000_000)
    with srv.client(key, timeout=600) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=chat("Write a long story.", max_tokens=1500, stream=True, logit_bias=no_eos)) as r:
            rid = r.headers["x-request-id"]
            lines = r.iter_lines()   # kept: a dropped iterator closes the connection, and the server cancels
            next(lines)
            poll(lambda: (hold_of(db_target, rid) or {}).get("delivered_tokens"), "a delivered-token mark")
            srv.kill()

    def expired():
        with Ledger(db_target, create=False) as ledger:
            return all(i["lease_left_ms"] < 0 for i in ledger.lease.instances())
    poll(expired, "the dead server's lease to expire")
    for args in (["keys", "list"], ["usage"], ["usage", "--key", "reader"]):
        out = reverb(*args, "--db", db_target)
        assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "reverb.cli", "chat", "--db", db_target, "--max-tokens", "4"],
                         input="hello\n/exit\n", capture_output=True, text=True, cwd=ROOT, timeout=600,
                         start_new_session=True)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert hold_of(db_target, rid) is not None and row_of(db_target, rid) is None
    replacement = make_server("--lease-seconds", "1", *ONE, db=db_target)   # a server settles it at start-up
    row = poll(lambda: row_of(db_target, rid), "the replacement to settle the hold")
    assert row["error_code"] == "interrupted" and row["completion_tokens"] > 0
    replacement.stop()


def test_postgres_unreachable_at_settle_time_fails_closed_then_settles(make_server, pg_server, no_eos):
    """The database goes away mid-stream: the stream ends with an error event (no [DONE]); once it is back,
    the server settles the request itself, charged for the text the stream delivered."""
    target = pg_server.new_database()
    # failed settlements are retried every third of the lease: 18 s retries within 6 s of the database's return
    # (30 s: within 10), and the lease (less the 6 s since the last heartbeat) still outlasts a slow outage by far,
    # so it never expires and the retry, not a sweep, settles the request
    srv = make_server("--lease-seconds", "18", *ONE, env={"REVERB_DB_BUSY_TIMEOUT": "1"}, db=target)
    key = new_key(target, "outage", 1_000_000)
    lines = []
    try:
        with srv.client(key, timeout=600) as http:
            with http.stream("POST", "/v1/chat/completions",
                             json=chat("Write an essay.", max_tokens=100, stream=True, logit_bias=no_eos)) as r:
                rid = r.headers["x-request-id"]
                it = r.iter_lines()
                lines.append(next(it))
                pg_server.pause()
                lines += list(it)
            assert "data: [DONE]" not in lines
            last = json.loads([ln for ln in lines if ln.startswith("data: {")][-1][6:])
            assert last["error"]["code"] == "ledger_unavailable"
            assert "SQL" not in json.dumps(last) and "psycopg" not in json.dumps(last)
    finally:
        pg_server.resume()
    row = poll(lambda: row_of(target, rid), "the retried settlement", timeout=120)
    assert (row["status"], row["error_code"], row["completion_tokens"]) == ("failed", "ledger_unavailable", 100)
    assert row["price"] == SPEC.cost(row["prompt_tokens"], 100)
    assert hold_of(target, rid) is None


def test_bad_ledger_urls_are_clear_errors(tmp_path):
    out = reverb("serve", "--port", "0", "--db", "mysql://u@127.0.0.1/x", "--api-key", "k")
    assert out.returncode == 2 and "unsupported ledger URL scheme 'mysql'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = reverb("serve", "--port", "0", "--db", f"postgresql://u:pw@127.0.0.1:{port}/x", "--api-key", "k",
                 env={"REVERB_DB_BUSY_TIMEOUT": "1"})
    assert out.returncode == 2 and "cannot reach the ledger database" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and ":pw@" not in out.stderr
