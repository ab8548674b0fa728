"""Runs last (tests/conftest.py orders it last; under xdist, on whichever worker takes it): no process a test
started is still running, and no `reverb` process descends from this test run, except the servers that session
fixtures own until the session ends."""

from __future__ import annotations

import os
from pathlib import Path

from .conftest import SESSION_OWNED, STARTED


def descendants(pid: int) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = cmdlines.get(child, "")
            todo.append(child)
    return out


def test_no_test_left_a_process_running():
    alive = [p.args for p in STARTED if p.poll() is None and p.pid not in SESSION_OWNED]
    assert not alive, alive
    owned = set(SESSION_OWNED) | {c for pid in SESSION_OWNED for c in descendants(pid)}
    strays = {pid: cmd for pid, cmd in descendants(os.getpid()).items() if "reverb" in cmd and pid not in owned}
    assert not strays, strays
