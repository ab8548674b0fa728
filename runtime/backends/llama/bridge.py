"""The owner thread of one model: the only place where threads meet the event loop.

The thread loops: admit waiting jobs (under the lock, since ``submit`` comes from the event loop), run one
``Batcher.step`` (outside the lock), and hand the step's chunks to each job's event loop in one
``call_soon_threadsafe`` (one wake-up per step, not per token). With adapting threads (threads.py), each step is
timed on this thread and the thread count for the next one follows.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ...errors import RETRY_GOING_AWAY, EngineError, OverloadedError
from .batcher import Batcher, Job

log = logging.getLogger("reverb.batcher")


@dataclass(frozen=True)
class Sink:
    """Where a job's chunks go: ``deliver(chunk)`` on ``loop`` (or on the model thread when loop is None)."""

    deliver: object
    loop: object = None


class ModelThread:
    """Runs a Batcher from its own thread. ``submit``, ``wake``, ``stats`` and ``stop`` are safe from any thread."""

    def __init__(self, batcher: Batcher, name: str = "model", threads=None):
        self.batcher = batcher
        self.threads = threads  # threads.EngineThreads, or None for fixed counts
        self._cv = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"reverb-{name}", daemon=True)
        self._thread.start()

    def submit(self, *jobs: Job) -> None:
        """Queue jobs, all or none. Raises OverloadedError when the wait queue is full or the model is stopping."""
        with self._cv:
            if not self._running:
                raise OverloadedError("the server is shutting down", retry_after=RETRY_GOING_AWAY)
            self.batcher.submit(list(jobs), time.monotonic())
            self._cv.notify()

    def wake(self) -> None:
        """Make the loop look at cancellation flags now (a client went away)."""
        with self._cv:
            self._cv.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything and wait for the thread."""
        with self._cv:
            self._running = False
            for s in self.batcher.slots:
                if s.job:
                    s.job.cancelled.set()
            for j in self.batcher.waiting:
                j.cancelled.set()
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        b = self.batcher
        while True:
            with self._cv:
                while self._running and not b.busy():
                    self._cv.wait()
                if not self._running and not b.active():
                    b.cancel_waiting()
                    self._flush()
                    return
                b.admit(time.monotonic())
            try:
                started = self.threads.start() if self.threads is not None else None
                b.step()
                if started is not None:
                    self.threads.stop(started)
            except Exception as e:  # the engine failed: fail the running jobs, keep serving
                log.exception("decode step failed")
                b.fail_running(EngineError("generation failed"))
                if not isinstance(e, EngineError):
                    time.sleep(0.01)  # an unexpected failure: do not spin on it
            self._flush()

    def _flush(self) -> None:
        """Hand this step's chunks over: one call_soon_threadsafe per event loop, in order."""
        events = self.batcher.take_events()
        if not events:
            return
        by_loop: dict = {}
        for job, chunk in events:
            sink: Sink = job.sink
            if sink.loop is None:
                sink.deliver(chunk)
            else:
                by_loop.setdefault(sink.loop, []).append((sink.deliver, chunk))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass


def _deliver_all(items: list) -> None:
    for deliver, chunk in items:
        deliver(chunk)
