"""--exit-with-parent: a test run killed by CI (kill -9 of pytest) leaves no `reverb serve` behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import spawn, wait_for


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it holds no port, memory or model)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.model
def test_a_killed_pytest_leaves_no_server_behind(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    out = tmp_path / "server.json"
    (project / "test_hang.py").write_text(
        "import json, os, threading\n"
        "def test_hang(reverb):\n"
        f"    tmp = {str(out)!r} + '.tmp'\n"
        "    open(tmp, 'w').write(json.dumps({'pid': reverb.server.process.pid,\n"
        "                                     'ready': str(reverb.server.workdir / 'ready')}))\n"
        f"    os.replace(tmp, {str(out)!r})\n"
        "    threading.Event().wait()   # until CI kills the run\n")
    runner = spawn([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)], cwd=project,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = json.loads(wait_for(lambda: out.exists() and out.read_text(), what="the fixture's server"))
    try:
        assert alive(info["pid"]) and Path(info["ready"]).exists()
        os.kill(runner.pid, signal.SIGKILL)   # only pytest: the server is not in its process group's kill
        runner.wait()
        wait_for(lambda: not alive(info["pid"]), what="the server to exit after its pytest was killed")
        assert not Path(info["ready"]).exists()   # it drained and cleaned up (SIGTERM), not killed
    finally:
        if alive(info["pid"]):
            os.kill(info["pid"], signal.SIGKILL)


@pytest.mark.model
def test_without_the_flag_the_server_outlives_its_parent_until_stopped(tmp_path):
    """The control: the same parent killed, a server started without --exit-with-parent keeps serving."""
    ready = tmp_path / "ready"
    parent = spawn([sys.executable, "-c",
                    "import subprocess, sys, threading\n"
                    "p = subprocess.Popen([sys.executable, '-m', 'reverb.cli', 'serve', '--port', '0', '--api-key',"
                    f" 'k', '--db', {str(tmp_path / 'l.db')!r}, '--ready-file', {str(ready)!r}],"
                    " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                    f"open({str(tmp_path / 'pid')!r}, 'w').write(str(p.pid))\n"
                    "threading.Event().wait()\n"])
    wait_for(ready.exists, what="the server")
    pid = int((tmp_path / "pid").read_text())
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: ppid(pid) != parent.pid, what="the server to be re-parented")
        import httpx
        assert httpx.get(ready.read_text().strip() + "/health", timeout=60).status_code == 200
        assert alive(pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), what="the server to stop")
