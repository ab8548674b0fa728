"""How many threads llama.cpp decodes with: as many as the cores this process may use, fewer while other work
takes some of them.

llama.cpp's threads meet at a spinning barrier after every operation of the graph. When other work takes a core,
one of them waits for a time slice and the others spin at the barrier meanwhile: on two cores with one busy loop
beside the server, two threads decode 10-50 times slower than one. So the count follows the CPU the process gets.

The signal: of the time the model's owner thread was runnable during a batcher step (it is one of the compute
threads and does the serial parts, so it is runnable throughout a step), the share it spent on a CPU rather than
waiting in the run queue (Linux's ``/proc/thread-self/schedstat``; elsewhere its CPU time over wall time). ``n``
threads that each get a share ``s`` have ``n * s`` cores between them. It needs no quiet reference (so it does
not depend on the batch shape, the context length or the machine), and waits that are not for a CPU (the GIL,
I/O) do not count. When the threads have lost half a core or more, the count drops to the cores they got; while
they get all their cores, a count below the maximum tries one more thread, keeps it if that thread gets (nearly)
its core too, and otherwise goes back and waits twice as long before the next try.

``ThreadControl`` is pure (no threads, no clock of its own): it is fed each step's times. ``EngineThreads`` reads
the clock and applies the count to the engine. ``usable_cores`` reads the CPU affinity and the cgroup quota.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("reverb.threads")


class ThreadControl:
    """Picks the thread count for the next step from the times of the previous ones.

    ``observe(runnable, ran)`` takes the seconds the owner thread was runnable during one step and the seconds of
    that it ran on a CPU; it returns the count to use. Its only clock is the steps' own time, so an idle server
    neither decides nor probes (a request after a pause does not start with a probe)."""

    LOST = 0.5          # cores the threads may lose before the count drops ...
    PROBE_LOST = 0.3    # ... and less than this for a probe to keep its thread (no flapping at the boundary)
    SPAN = 0.1          # seconds of steps a decision needs, so one preemption does not move the count ...
    MIN_STEPS = 2       # ... and this many steps to drop (one for a probe: its first collapsed step is plain)
    PROBE_FIRST = 4.0   # seconds of steps at a lower count before trying one more thread (a probe under contention
                        # can cost a collapsed step or two: rarely enough that the average keeps its share)
    PROBE_MOST = 20.0   # the longest wait between tries (each failed try doubles the wait)
    PROBE_SLOWER = 1.5  # a probe's step this much slower than the steps before it fails at once: threads that
                        # collapse at the barrier may still show the owner thread on a CPU (it spins there)

    def __init__(self, most: int, least: int = 1):
        self.most = max(1, most)
        self.least = max(1, min(least, self.most))
        self.count = self.most
        self.changes = 0                       # how many times the count moved (for tests and logs)
        self.last_cores = float(self.most)     # the cores the last decision saw
        self._window: deque[tuple[float, float]] = deque()
        self._probing = False                  # the current count is a probe, one above the last good one
        self._wait = self.PROBE_FIRST
        self._spent = 0.0                      # seconds of steps since the count last changed
        self._step: float | None = None        # a step's usual runnable seconds at this count (moving average)
        self._before: float | None = None      # ... at the count a probe started from

    def observe(self, runnable: float, ran: float, wall: float | None = None) -> int:
        if runnable <= 0:
            return self.count
        step = runnable if wall is None else max(wall, runnable)   # blocked at a barrier counts here too
        if self._probing and self._before is not None and step > self.PROBE_SLOWER * self._before:
            self._probing = False
            self._wait = min(self._wait * 2, self.PROBE_MOST)
            self._move(self.count - 1)
            return self.count
        if not self._probing:
            self._step = step if self._step is None else 0.8 * self._step + 0.2 * step
        self._spent += runnable
        self._window.append((runnable, min(ran, runnable)))
        while len(self._window) > self.MIN_STEPS and sum(w for w, _ in self._window) - self._window[0][0] >= self.SPAN:
            self._window.popleft()  # keep the newest steps that still make a decision's worth
        total = sum(w for w, _ in self._window)
        if total < self.SPAN or len(self._window) < (1 if self._probing else self.MIN_STEPS):
            return self.count
        cores = self.count * sum(c for _, c in self._window) / total
        self.last_cores = cores
        if self._probing:
            self._probing = False
            if cores > self.count - self.PROBE_LOST:
                self._wait = self.PROBE_FIRST  # the extra thread got its core: keep it, try another soon
                self._move(self.count)
            else:
                self._wait = min(self._wait * 2, self.PROBE_MOST)
                self._move(self.count - 1)
        elif cores <= self.count - self.LOST and self.count > self.least:
            self._wait = self.PROBE_FIRST
            self._move(max(self.least, min(self.count - 1, math.floor(cores + 0.5))))
        elif self.count < self.most and cores > self.count - self.LOST / 2 and self._spent >= self._wait:
            before = self._step
            self._probing = True
            self._move(self.count + 1)
            self._before = before
        return self.count

    def _move(self, count: int) -> None:
        if count != self.count:
            self.changes += 1
        self.count = count
        self._spent = 0.0
        self._window.clear()
        self._step = self._before = None


class ThreadClock:
    """The calling thread's seconds on a CPU and seconds runnable (on a CPU or waiting in the run queue) so far.
    Make it on the thread it measures."""

    def __init__(self):
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self.read()
        except (OSError, ValueError, IndexError):
            self._fd = None  # not Linux, or no scheduler statistics: CPU time and wall time

    def read(self) -> tuple[str, float, float]:
        """(which clock, ran, runnable), seconds. A file that stops reading well turns the fallback on."""
        if self._fd is not None:
            try:
                ran, waited = os.pread(self._fd, 64, 0).split()[:2]
                return "schedstat", int(ran) / 1e9, (int(ran) + int(waited)) / 1e9
            except (OSError, ValueError):
                self.close()
        return "cpu/wall", time.thread_time(), time.perf_counter()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class ThreadPlan:
    """The thread counts a model starts with, and which of them adapt (--threads / --threads-batch 0)."""

    n_threads: int
    n_threads_batch: int
    adapt: bool = False
    adapt_batch: bool = False

    @classmethod
    def from_flags(cls, threads: int, threads_batch: int) -> "ThreadPlan":
        n = threads or usable_cores()
        return cls(n, threads_batch or n, adapt=not threads, adapt_batch=not threads and not threads_batch)


class EngineThreads:
    """A ThreadControl applied to an engine (``set_threads``), fed by the model's owner thread around each step."""

    def __init__(self, engine, plan: ThreadPlan):
        self.engine, self.plan = engine, plan
        self.control = ThreadControl(plan.n_threads)
        self._clock: ThreadClock | None = None

    def start(self) -> tuple[str, float, float, float]:
        if self._clock is None:  # made on the owner thread: the clock measures the thread that opens it
            self._clock = ThreadClock()
        return (*self._clock.read(), time.perf_counter())

    def stop(self, started: tuple[str, float, float, float]) -> None:
        kind, ran, runnable = self._clock.read()
        if kind != started[0]:  # the clock changed during the step: nothing to compare
            return
        before = self.control.count
        wall = time.perf_counter() - started[3]
        if self.control.observe(runnable - started[2], ran - started[1], wall) != before:
            log.info("decode threads %d -> %d: %d threads got %.2f cores", before, self.control.count, before,
                     self.control.last_cores)
            self.engine.set_threads(*self.counts())

    def counts(self) -> tuple[int, int]:
        """(n_threads, n_threads_batch) now."""
        p, n = self.plan, self.control.count
        return (n if p.adapt else p.n_threads, n if p.adapt_batch else p.n_threads_batch)

    def close(self) -> None:
        if self._clock is not None:
            self._clock.close()


def usable_cores(proc: Path = Path("/proc/self"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (v2 ``cpu.max`` on its
    cgroup or any parent, or v1 ``cpu.cfs_quota_us``), rounded up. At least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(proc, cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_quota(proc: Path = Path("/proc/self"), root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The smallest CPU quota (in cores) on this process's cgroup and its parents, or None when there is none."""
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy; a limit may sit on any ancestor
            here = root / path.lstrip("/")
            for d in [here, *here.parents]:
                quotas.append(_read_quota(d / "cpu.max", v2=True))
                if d == root:
                    break
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            base = root / controllers
            if not base.is_dir():
                base = root / "cpu"
            here = base / path.lstrip("/")
            for d in [here, *here.parents]:
                quotas.append(_read_quota(d, v2=False))
                if d == base:
                    break
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _read_quota(where: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota, period = where.read_text().split()[:2]
        else:
            quota = (where / "cpu.cfs_quota_us").read_text().strip()
            period = (where / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period) if int(period) > 0 and int(quota) > 0 else None
    except (OSError, ValueError):
        return None

