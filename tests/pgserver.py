"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, loopback only, a free port, trust auth.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (``runuser``). The binaries
come from Debian's packages (``make install`` installs them where apt can); ``find_bindir`` looks in the usual
places. ``stop`` is safe to call twice and falls back to ``pg_ctl stop -m immediate`` and then SIGKILL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_bindir() -> Path | None:
    """The directory of initdb/pg_ctl: Debian's versioned dirs (newest first), then PATH, then pg_config."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]),
                   reverse=True)
    if found:
        return Path(found[0]).parent
    for name in ("initdb",):
        path = shutil.which(name)
        if path:
            return Path(path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path, fsync: bool = False):
        self.bindir = bindir
        self.fsync = fsync   # off for tests (nothing to keep); on for the benchmark, as in production
        self.dir = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.started = False

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout, cwd=self.dir,
                              start_new_session=True)

    def start(self) -> "PgServer":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        for attempt in range(5):
            try:
                self.resume()
                return self
            except subprocess.CalledProcessError:
                # PostgreSQL takes no port 0: another run (two suites at once) may bind the free port we picked
                # before this server does. Then pick another one.
                if attempt == 4 or "already in use" not in self.log():
                    raise
                self.port = free_port()
        return self

    def pause(self) -> None:
        """Stop the server abruptly (its clients see their connections drop); ``resume`` brings it back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop", check=False)
        self.started = False

    def resume(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync={'on' if self.fsync else 'off'} "
                f"-c max_connections=200 -c shared_buffers=16MB")
        # -w: pg_ctl waits until the server accepts connections (its own bounded wait), not a sleep of ours
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "server.log"), "-w", "-t", "120",
                  "start")
        self.started = True

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.started:
            r = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", check=False)
            if r.returncode != 0:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
            self._kill_leftover()
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftover(self) -> None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
