"""pytest plugin: test your LLM-calling code against a real model, offline, in CI (docs/testing-in-ci.md).

Registered through the ``pytest11`` entry point, so installing reverb-runtime is enough. One ``reverb serve`` per
session (per xdist worker, or one shared) with the tiny model and a fresh ledger; each test that asks for the
``reverb`` fixture gets a ``ReverbTest`` with its own API key, so its usage, faults and journal are its own:

    def test_summary(reverb):
        r = reverb.client.chat.completions.create(model=reverb.model, temperature=0, max_tokens=20,
                                                  messages=[{"role": "user", "content": "hi"}])
        assert reverb.usage().requests == 1

``reverb_server`` is the session's server (its own key; use it from session-scoped fixtures). Options (command
line, or ini keys): ``--reverb-model``, ``--reverb-parallel``, ``--reverb-models`` (a models.toml),
``--reverb-startup-timeout``, ``--reverb-deterministic`` (default true), ``--reverb-budget-tokens`` (every test's
token budget), ``--reverb-prices input=X,output=Y`` (cost per 1M tokens in the summary), ``--reverb-top N`` (the
summary's length), ``--reverb-xdist per-worker|shared``; ``--reverb-record``, ``--reverb-replay[=strict]``,
``--reverb-cassettes DIR`` (command line only). Markers: ``reverb_budget(tokens=, requests=, cost=)``,
``reverb_replay(mode)``. Heavy imports happen only when a fixture is used, so the plugin costs nothing in other
test suites.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from .testkit.server import ReverbServer, split_threads, start_server, stop_server  # noqa: F401 - public names

OPTIONS = [
    ("model", "", "model name from models.toml (default: the catalogue's default)"),
    ("parallel", "2", "slots decoded together"),
    ("models", "", "path of a models.toml"),
    ("startup-timeout", "120", "seconds to wait for the server"),
    ("deterministic", "true", "same answer for a seeded request whatever runs beside it (true/false)"),
    ("budget-tokens", "", "fail any test that uses more tokens than this (prompt + completion)"),
    ("prices", "", "cost per 1M tokens for the summary, e.g. input=2.50,output=10 (default: the catalogue's)"),
    ("top", "10", "how many of the most expensive tests the terminal summary lists (0: none)"),
    ("xdist", "per-worker", "under pytest-xdist: one server per worker with the cores split between them "
     "(per-worker), or one for all workers, started by the controller (shared: one copy of the model in memory)"),
]
USAGE = "reverb_usage"   # the report's user property carrying a test's usage (crosses xdist to the controller)
MISSES = "reverb_replay_misses"
_CONFIG_USAGE: list[tuple[str, dict]] = []   # (nodeid, usage) of this run's tests, for the terminal summary
_MISSES: list[tuple[str, list[str]]] = []    # (nodeid, requests not in its cassette)


def pytest_addoption(parser) -> None:
    group = parser.getgroup("reverb", "reverb-runtime test server")
    for name, default, help_ in OPTIONS:
        group.addoption(f"--reverb-{name}", default=None, help=help_)
        parser.addini(f"reverb_{name.replace('-', '_')}", help_, default=default)
    group.addoption("--reverb-record", action="store_true", help="write one cassette per test from what the "
                    "server answered (run against a real provider: --reverb-models with a source = \"openai\" entry)")
    group.addoption("--reverb-replay", nargs="?", const="on", default=None, choices=("on", "strict"),
                    help="answer from each test's cassette; a request not in it is answered by the tiny model and "
                    "reported as a miss (strict: the test fails)")
    group.addoption("--reverb-cassettes", default=None, metavar="DIR", help="where cassettes live (default: a "
                    "cassettes/ folder beside each test file)")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "reverb_budget(tokens=None, requests=None, cost=None): fail the test when "
                            "its reverb usage goes over")
    config.addinivalue_line("markers", "reverb_replay(mode='on'): always answer this test from its cassette "
                            "('strict': a request not in it fails the test); --reverb-record re-records it")
    from .testkit.usage import parse_prices
    try:
        config._reverb_prices = parse_prices(_opt(config, "prices"))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    budget = str(_opt(config, "budget-tokens")).strip()
    if budget and not budget.isdigit():
        raise pytest.UsageError(f"--reverb-budget-tokens takes a whole number, not {budget!r}")
    _CONFIG_USAGE.clear()
    _MISSES.clear()
    if config.getoption("--reverb-record") and config.getoption("--reverb-replay"):
        raise pytest.UsageError("--reverb-record and --reverb-replay exclude each other")
    mode = _opt(config, "xdist")
    if mode not in ("shared", "per-worker"):
        raise pytest.UsageError(f"--reverb-xdist takes shared or per-worker, not {mode!r}")
    if mode == "shared" and config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput") \
            and config.getoption("numprocesses", None):
        config.pluginmanager.register(_XdistController(config), "reverb-xdist-controller")


def _opt(config, name: str) -> str:
    value = config.getoption(f"--reverb-{name}")
    return value if value is not None else config.getini(f"reverb_{name.replace('-', '_')}")


def _flag(value: str, name: str) -> bool:
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise pytest.UsageError(f"{name} takes true or false, not {value!r}")


@dataclass
class ReverbTest:
    """One test's view of the session's server: its own key and client, its usage, faults and journal."""
    server: ReverbServer = field(repr=False)
    api_key: str = field(repr=False)
    key_name: str
    _keys: object = field(repr=False)
    _control: object = field(repr=False, default=None)
    _client: object = field(repr=False, default=None)
    cassette: object = field(repr=False, default=None)   # its cassette's path when replaying
    replay_mode: str | None = None

    def replay_misses(self) -> list[str]:
        """Requests of this test that its cassette did not hold (answered by the local model instead)."""
        from .testkit.cassettes import misses
        return misses(self.requests()) if self.cassette is not None else []

    base_url = property(lambda self: self.server.base_url)
    model = property(lambda self: self.server.model)
    startup_seconds = property(lambda self: self.server.startup_seconds)

    @property
    def client(self):
        """A ready ``openai.OpenAI`` client with this test's key (no retries, so failures surface)."""
        if self._client is None:
            import openai
            self._client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key, max_retries=0)
        return self._client

    def usage(self):
        """This test's requests, tokens and cost so far (a ``Usage``), from the server's ledger."""
        return self._keys.usage(self.key_name)

    @property
    def control(self):
        if self._control is None:
            from .testkit.control import Control
            self._control = Control(self.base_url, self.server.control_secret, self.api_key)
        return self._control

    def fault(self, kind, **kw) -> None:
        """Inject a fault into this test's next requests; see ``reverb.testkit.control.Control.fault``."""
        self.control.fault(kind, **kw)

    def requests(self) -> list[dict]:
        """The journal of what this test's key sent (times, bodies, headers minus the key)."""
        return self.control.requests()

    def assert_honours_retry_after(self) -> None:
        self.control.assert_honours_retry_after()

    def assert_no_retry_storm(self, **kw) -> None:
        self.control.assert_no_retry_storm(**kw)

    def assert_rejects_truncated_stream(self, **kw):
        return self.control.assert_rejects_truncated_stream(**kw)


def _start(cfg, workdir, workers: int = 1, shared: bool = False) -> ReverbServer:
    parallel = int(_opt(cfg, "parallel"))
    return start_server(model=_opt(cfg, "model"), parallel=max(parallel, workers) if shared else parallel,
                        models=_opt(cfg, "models"), timeout=float(_opt(cfg, "startup-timeout")), workdir=workdir,
                        deterministic=_flag(_opt(cfg, "deterministic"), "--reverb-deterministic"),
                        threads=int(os.environ.get("REVERB_THREADS") or 0) or (
                            0 if shared or workers <= 1 else split_threads(workers)))


class _XdistController:
    """With pytest-xdist and ``--reverb-xdist shared``: the controller starts one server, on the first worker's
    start, and hands it to every worker (``workerinput``); it lives as long as the controller."""

    def __init__(self, config):
        self.config = config
        self.server: ReverbServer | None = None
        self.passed = False          # the run's outcome, known at sessionfinish

    def pytest_configure_node(self, node) -> None:
        if self.server is None:
            import tempfile
            from pathlib import Path
            workers = int(self.config.option.numprocesses or 1)   # xdist has resolved "auto" by now
            self.server = _start(self.config, Path(tempfile.mkdtemp(prefix="reverb-xdist-")), workers, shared=True)
        s = self.server
        node.workerinput["reverb_server"] = {
            "base_url": s.base_url, "api_key": s.api_key, "model": s.model, "startup_seconds": s.startup_seconds,
            "db_path": str(s.db_path), "control_secret": s.control_secret, "workdir": str(s.workdir)}

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.passed = exitstatus == 0

    def pytest_unconfigure(self, config) -> None:
        if self.server is not None:
            stop_server(self.server)
            if self.passed:   # a failed run keeps the server's log and ledger to look at
                import shutil
                shutil.rmtree(self.server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def reverb_server(request, tmp_path_factory):
    """The session's real reverb server with the tiny model (under xdist: the controller's, or one per worker)."""
    cfg = request.config
    given = getattr(cfg, "workerinput", {}).get("reverb_server")
    if given:
        from pathlib import Path
        yield ReverbServer(**{**given, "db_path": Path(given["db_path"]), "workdir": Path(given["workdir"])},
                           process=None)
        return
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    server = _start(cfg, tmp_path_factory.mktemp("reverb"), workers)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def _reverb_keys(reverb_server, request):
    from .testkit.usage import KeyRing
    keys = KeyRing(reverb_server.db_path, request.config._reverb_prices)
    yield keys
    keys.close()


@pytest.fixture
def reverb(request, reverb_server, _reverb_keys):
    """This test's own key on the session's server (see ``ReverbTest``)."""
    from .testkit import cassettes
    name, raw = _reverb_keys.create(request.node.nodeid)
    test = ReverbTest(server=reverb_server, api_key=raw, key_name=name, _keys=_reverb_keys)
    request.node._reverb_test = test
    cfg = request.config
    root = cfg.getoption("--reverb-cassettes")
    path = cassettes.cassette_path(request.node.path, request.node.name, root and cfg.rootpath / root)
    test.control.watch()   # one loopback POST: the journal starts with the test
    marker = request.node.get_closest_marker("reverb_replay")
    test.replay_mode = cfg.getoption("--reverb-replay") or (marker and (marker.args or ("on",))[0])
    if test.replay_mode not in (None, "on", "strict"):
        pytest.fail(f"reverb_replay takes 'on' or 'strict', not {test.replay_mode!r}", pytrace=False)
    if cfg.getoption("--reverb-record"):
        test.control.record()
    elif test.replay_mode:
        test.cassette = path
        test.control.replay(cassettes.read(path), reverb_server.model)
    yield test
    if cfg.getoption("--reverb-record"):
        items = cassettes.interactions(test.requests())
        if items:
            cassettes.write(path, request.node.nodeid, items)
    test.control.forget()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After a test body that passed: its budget and (strict replay) its cassette misses fail it, as an exception
    of the call itself, so pytest's own machinery (xfail, reports, xdist) treats it like any failure."""
    result = yield
    test = getattr(item, "_reverb_test", None)
    if test is None:
        return result
    from .testkit.usage import over_budget
    usage = test.usage()
    marker = item.get_closest_marker("reverb_budget")
    budget = dict(marker.kwargs) if marker else {}
    default = _opt(item.config, "budget-tokens")
    if "tokens" not in budget and str(default).strip():
        budget["tokens"] = int(default)
    why = over_budget(usage, **budget)
    if why:
        pytest.fail(f"{why} ({usage.requests} requests, {usage.prompt_tokens} prompt + {usage.completion_tokens} "
                    f"completion tokens, cost {usage.cost:.6f})", pytrace=False)
    if test.replay_mode == "strict" and (missed := test.replay_misses()):
        pytest.fail(f"reverb replay (strict): {len(missed)} request(s) not in {test.cassette}: "
                    + ", ".join(missed), pytrace=False)
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each test's usage and replay misses travel with its report (to the summary, across xdist)."""
    outcome = yield
    test = getattr(item, "_reverb_test", None)
    if call.when != "call" or test is None:
        return
    report = outcome.get_result()
    report.user_properties.append((USAGE, test.usage().as_dict()))
    if test.cassette is not None and (missed := test.replay_misses()):
        report.user_properties.append((MISSES, missed))


def pytest_runtest_logreport(report) -> None:
    for name, value in getattr(report, "user_properties", ()):
        if name == USAGE and report.when == "call":
            _CONFIG_USAGE.append((report.nodeid, value))
        elif name == MISSES and report.when == "call":
            _MISSES.append((report.nodeid, value))


def pytest_terminal_summary(terminalreporter, config) -> None:
    if _MISSES:
        terminalreporter.write_sep("-", f"reverb replay: {len(_MISSES)} test(s) sent requests not in their "
                                        "cassette (answered by the tiny model; re-record them)")
        for nodeid, missed in _MISSES:
            terminalreporter.write_line(f"MISS {nodeid}: {', '.join(missed)}")
    top = int(_opt(config, "top") or 0)
    rows = sorted(_CONFIG_USAGE, key=lambda r: (-r[1]["tokens"], -r[1]["requests"], r[0]))[:top]
    if not rows:
        return
    prices = config._reverb_prices
    where = (f"at input {prices.input}, output {prices.output} per 1M tokens" if prices
             else "at the catalogue's prices")
    tr = terminalreporter
    tr.write_sep("-", f"reverb: the {len(rows)} most expensive tests (cost {where})")
    tr.write_line(f"{'tokens':>8} {'requests':>8} {'cost':>12}  test")
    for nodeid, u in rows:
        tr.write_line(f"{u['tokens']:>8} {u['requests']:>8} {u['cost']:>12.6f}  {nodeid}")
    total = [sum(u[k] for _, u in _CONFIG_USAGE) for k in ("tokens", "requests", "cost")]
    tr.write_line(f"{total[0]:>8} {total[1]:>8} {total[2]:>12.6f}  all {len(_CONFIG_USAGE)} tests")
