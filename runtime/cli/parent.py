"""``--exit-with-parent``: a server started by a test runner goes when the runner goes.

A watcher thread polls ``os.getppid()``: when the parent dies the process is re-parented (to init or a
subreaper), so the id changes, and the server sends itself SIGTERM, the same graceful drain as a CI job's own
stop. Polling is used instead of Linux's ``prctl(PR_SET_PDEATHSIG)`` because that signal fires when the parent
*thread* that forked the server exits, which kills servers started from a worker thread while their parent lives
on; polling works on every POSIX system and costs one system call every ``interval`` seconds.
"""

from __future__ import annotations

import os
import signal
import threading


def exit_with_parent(interval: float = 0.2) -> threading.Thread:
    """Start the watcher (a daemon thread) for the current parent."""
    parent = os.getppid()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="reverb-parent-watch", daemon=True)
    thread.start()
    return thread
