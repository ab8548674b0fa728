"""Faults and the request journal of one test's key, through the server's test control routes (api/faults.py),
and the verdicts a test draws from the journal about its client's behaviour."""

from __future__ import annotations

import contextlib
import itertools
import json
import urllib.error
import urllib.request

KINDS = ("429", "500", "502", "503", "504", "insufficient_quota", "context_length_exceeded", "reset", "stall",
         "slow_first_token", "disconnect", "truncate", "corrupt")


class Control:
    def __init__(self, base_url: str, secret: str, key: str):
        if not secret:
            raise RuntimeError("this reverb server was started without test control (start_server(control=True))")
        self.base_url, self.secret, self.key = base_url, secret, key

    def _post(self, action: str, body: dict) -> dict:
        data = json.dumps({"key": self.key, **body}).encode()
        req = urllib.request.Request(f"{self.base_url}/_reverb/{action}", data=data, method="POST",
                                     headers={"X-Reverb-Control": self.secret, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise ValueError(json.load(e).get("error", {}).get("message", str(e))) from None

    def fault(self, kind: str | int, *, times: int | None = None, rate: float | None = None, seed: int = 0,
              after: int = 0, seconds: float = 30.0, retry_after: int = 1) -> None:
        """Inject ``kind`` into this test's next ``times`` requests (default 1), or a seeded fraction ``rate``."""
        fault = {"kind": str(kind), "seed": seed, "after": after, "seconds": seconds, "retry_after": retry_after}
        if times is not None:
            fault["times"] = times
        if rate is not None:
            fault["rate"] = rate
        self._post("faults", {"fault": fault})

    def requests(self) -> list[dict]:
        """What this test's key sent, oldest first: t (epoch seconds), t_end, method, path, headers (no
        credentials), body (parsed JSON), status, fault."""
        return self._post("journal", {})["requests"]

    def watch(self) -> None:
        """Register this key: its requests are journaled (and can be faulted) from now on."""
        self._post("watch", {})

    def reset(self) -> None:
        """Clear this key's faults, journal and cassette; it stays registered."""
        self._post("reset", {})

    def forget(self) -> None:
        self._post("forget", {})

    def record(self) -> None:
        """Keep each answer in the journal (for a cassette)."""
        self._post("record", {})

    def replay(self, interactions: list[dict], model: str) -> None:
        """Answer matching requests from ``interactions``; send a miss to ``model``."""
        self._post("cassette", {"interactions": interactions, "model": model})

    # -- verdicts -------------------------------------------------------------------------------------------

    def assert_honours_retry_after(self) -> None:
        """Every request after a response carrying ``Retry-After`` came at least that many seconds later."""
        journal = self.requests()
        waited = [e for e in journal if (e.get("headers_out") or {}).get("retry-after")]
        assert waited, "no response carried Retry-After: inject one with reverb.fault(429, retry_after=...)"
        for before, after in itertools.pairwise(journal):
            retry = (before.get("headers_out") or {}).get("retry-after")
            if retry is not None:
                gap = after["t"] - before["t_response"]   # the client saw the answer after this
                assert gap >= float(retry), (f"the client retried {gap:.3f} s after a {before['status']} that said "
                                             f"Retry-After: {retry}")

    def assert_no_retry_storm(self, max_attempts: int = 5, min_gap: float = 0.1) -> None:
        """No request was sent more than ``max_attempts`` times, and no retry after an error came sooner than
        ``min_gap`` seconds (no backoff)."""
        journal = self.requests()
        counts: dict[str, int] = {}
        for e in journal:
            body = json.dumps([e["path"], e["body"]], sort_keys=True)
            counts[body] = counts.get(body, 0) + 1
            assert counts[body] <= max_attempts, f"the same request was sent {counts[body]} times (a retry storm)"
        for before, after in itertools.pairwise(journal):
            if (before["status"] is None or before["status"] >= 400) and after["body"] == before["body"]:
                gap = after["t"] - (before["t_response"] or before["t_end"])
                assert gap >= min_gap, f"the client retried {gap * 1000:.0f} ms after a failure, with no backoff"

    @contextlib.contextmanager
    def assert_rejects_truncated_stream(self, after: int = 3, kind: str = "truncate"):
        """Inside the block, the next request's stream is cut mid-event (or ``kind="corrupt"``: one event is
        broken); the block must raise. A client that returns a partial answer as if it were whole fails."""
        self.fault(kind, after=after)
        start = len(self.requests())
        try:
            yield
        except Exception:  # noqa: BLE001 - any error is the client noticing
            hit = [e for e in self.requests()[start:] if e["fault"] == kind]
            assert hit, f"the block failed, but no request received the {kind} fault"
            return
        hit = [e for e in self.requests()[start:] if e["fault"] == kind]
        assert hit, f"no request received the {kind} fault (did the block stream at least {after + 1} events?)"
        raise AssertionError(f"the client accepted a {'truncated' if kind == 'truncate' else 'corrupt'} stream "
                             f"as a whole answer")
