"""A server's resident memory while an attack runs: sampled from /proc on a thread, peak against the start."""

from __future__ import annotations

import threading


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss:
    """``with PeakRss(pid) as rss: ...`` then ``rss.grew_mb``: the peak RSS inside, less the RSS on entry."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.start = self.peak = 0.0
        self._done = threading.Event()

    def __enter__(self) -> "PeakRss":
        self.start = self.peak = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, AssertionError):
                return  # the process ended

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        try:
            self.peak = max(self.peak, rss_mb(self.pid))
        except (OSError, AssertionError):
            pass

    @property
    def grew_mb(self) -> float:
        return self.peak - self.start

    def report(self) -> str:
        return f"RSS {self.start:.0f} MB at the start, {self.peak:.0f} MB at the peak"
