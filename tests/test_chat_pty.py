"""`reverb chat` driven through a real pseudo-terminal, as a person would use it."""

from __future__ import annotations

import http.server
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from .conftest import KEY, ROOT

LONG = "Write a very long essay about the history of the oceans, with many chapters."


class Term:
    def __init__(self, *args: str, home: str | None = None):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is its controlling terminal, so ^C becomes SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)   # a suite started in the background inherits SIGINT ignored
            os.chdir(ROOT)
            env = {k: v for k, v in os.environ.items() if k != "REVERB_API_KEY"}
            if home:   # chat keeps its line history and saved chats there
                env["XDG_DATA_HOME"] = home
            os.execve(sys.executable, [sys.executable, "-m", "reverb.cli", "chat", *args], env)
        self.out = ""
        self.pos = 0  # matches are searched after the previous match only

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        """Output up to and including the next ``pattern`` after the previous match."""
        deadline = time.monotonic() + timeout
        while pattern not in self.out[self.pos:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"did not see {pattern!r} in:\n{self.out}")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    self.out += os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:
                    break
        end = self.out.index(pattern, self.pos) + len(pattern)
        seen, self.pos = self.out[self.pos:end], end
        return seen

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r, _, _ = select.select([self.fd], [], [], max(0, end - time.monotonic()))
            if r:
                try:
                    self.out += os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:
                    return

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                return os.waitstatus_to_exitcode(status)
            self.drain(0.1)
        raise AssertionError("chat did not exit")

    def kill(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
        os.close(self.fd)


@pytest.fixture
def term(tmp_path):
    """Start `reverb chat` in a pseudo-terminal; killed at the end of the test, passed or failed. Its data
    directory (line history, saved chats) is the test's own."""
    started: list[Term] = []

    def start(*args: str) -> Term:
        started.append(Term(*args, home=str(tmp_path / "data")))
        return started[-1]

    yield start
    for t in started:
        t.kill()


@pytest.mark.parametrize("mode", ["local", "url"])
def test_chat_streams_keeps_history_and_survives_ctrl_c(mode, server, term):
    args = ["--temperature", "0", "--max-tokens", "1500"]
    if mode == "url":
        args += ["--url", server.base_url, "--api-key", KEY]
    t = term(*args)
    t.read_until("/exit leaves", timeout=300)
    t.read_until("> ")
    t.send("/help\n")  # a command, not a message to the model
    t.read_until("/history")
    t.read_until("\n> ")
    t.send(LONG + "\n")  # greedy decoding runs this to the token limit: long enough to interrupt
    mark = len(t.out)
    deadline = time.monotonic() + 300
    while len(t.out) < mark + 300 and time.monotonic() < deadline:
        t.drain(0.1)
    assert len(t.out) >= mark + 300, t.out  # tokens are streaming in
    t.send("\x03")  # Ctrl-C stops the answer, not the program
    t.read_until("[stopped]", timeout=300)
    t.read_until("\n> ", timeout=300)
    t.send("say \\\n")  # multi-line input
    t.read_until("... ")
    t.send("hello\n")
    t.read_until("hello")
    mark = len(t.out)
    deadline = time.monotonic() + 300
    while "\n> " not in t.out[mark:] and len(t.out) < mark + 20 and time.monotonic() < deadline:
        t.drain(0.1)
    answer = t.out[mark:].split("\n> ")[0].strip()
    assert answer, t.out  # the two lines went out as one message and are being answered
    if "\n> " not in t.out[mark:]:
        # Greedy decoding of a short chat can run to --max-tokens (1500): stop it rather than wait on a busy
        # machine. Should the answer end first after all, the ^C lands on the prompt, which only offers to leave.
        t.send("\x03")
    t.read_until("\n> ", timeout=300)
    t.send("/reset\n")
    t.read_until("(history cleared)")
    t.send("x " * 3000 + "\n")  # too long for the context: an error line, and the chat goes on
    t.read_until("(error:", timeout=300)
    t.read_until("\n> ", timeout=300)
    t.send("/exit\n")
    assert t.wait() == 0


class FakeBackend:
    """Stands in at the backend seam to check what the chat loop sends."""

    model = "fake"

    def __init__(self):
        self.sent = []

    def stream(self, messages, params, max_tokens):
        self.sent.append([dict(m) for m in messages])
        yield "ok"

    def check(self):
        pass

    def cancel(self):
        pass

    def close(self):
        pass


def test_history_multiline_and_reset(monkeypatch, capsys):
    from reverb.cli import chat
    from reverb.types import SamplingParams
    lines = iter(["one", "two \\", "lines", "/reset", "/help", "/nope", "three", "//slash", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    backend = FakeBackend()
    assert chat.run(backend, SamplingParams(), 10, system="be brief") == 0
    assert backend.sent[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}]
    assert backend.sent[1][-3:] == [{"role": "user", "content": "one"}, {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "two \nlines"}]
    assert backend.sent[2] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "three"}]
    assert backend.sent[3][-1] == {"role": "user", "content": "/slash"}
    assert len(backend.sent) == 4  # /help and /nope never reached the model
    out = capsys.readouterr().out
    assert "(history cleared)" in out and "/history" in out and "unknown command /nope" in out


def test_unreachable_server_is_an_error_line_not_a_crash(monkeypatch, capsys):
    from reverb.cli import chat
    from reverb.types import SamplingParams
    lines = iter(["hello", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    backend = chat.RemoteBackend("http://127.0.0.1:1", "k", None)  # nothing listens on port 1
    assert chat.run(backend, SamplingParams(), 5) == 0
    out = capsys.readouterr().out
    assert "(error: cannot reach http://127.0.0.1:1" in out and "Traceback" not in out


def chat_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REVERB_API_KEY"}
    return subprocess.run([sys.executable, "-m", "reverb.cli", "chat", *args], capture_output=True, text=True,
                          input="hello\n/exit\n", cwd=ROOT, env=env, timeout=600)


@pytest.mark.parametrize("args,said", [
    (["--url", "127.0.0.1:8000"], "--url must look like http://host:port"),
    (["--url", "http://127.0.0.1:1"], "cannot reach"),
])
def test_chat_that_cannot_work_exits_non_zero_before_the_first_prompt(args, said):
    r = chat_cli(*args, "--api-key", "k")
    assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert "> " not in r.stdout


def test_chat_checks_the_key_and_the_model_first(server):
    bad_key = chat_cli("--url", server.base_url, "--api-key", "wrong")
    assert bad_key.returncode != 0 and "401" in bad_key.stderr
    bad_model = chat_cli("--url", server.base_url, "--api-key", KEY, "--model", "nope")
    assert bad_model.returncode != 0 and "does not serve 'nope'" in bad_model.stderr


class HtmlErrors(http.server.BaseHTTPRequestHandler):
    """A server behind a proxy that answers chat requests with an HTML error page."""

    def do_GET(self):  # noqa: N802
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b"<html><body>502 Bad Gateway</body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_non_json_answer_is_an_error_line_and_the_chat_goes_on():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HtmlErrors)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = chat_cli("--url", f"http://127.0.0.1:{srv.server_port}", "--api-key", "k")
    finally:
        srv.shutdown()
    assert r.returncode == 0, r.stderr
    assert "(error: the server answered HTTP 502 with something that is not JSON)" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_typed_lines_are_kept_across_sessions(server, term):
    args = ["--url", server.base_url, "--api-key", KEY]
    t = term(*args)
    t.read_until("/exit leaves", timeout=300)
    t.read_until("> ")
    t.send("/set temperature 0.3\n")
    t.read_until("(temperature: 0.3)")
    t.send("/exit\n")
    assert t.wait() == 0
    t = term(*args)   # a new session: arrow up brings back the last line typed in the one before
    t.read_until("/exit leaves", timeout=300)
    t.read_until("> ")
    t.send("\x1b[A")
    t.read_until("/exit")
    t.send("\x1b[A\n")
    t.read_until("(temperature: 0.3)")
    t.send("/exit\n")
    assert t.wait() == 0
