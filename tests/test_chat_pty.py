"""`reverb chat` driven through a real pseudo-terminal, as a person would use it."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest

from .conftest import KEY, ROOT

LONG = "Write a very long essay about the history of the oceans, with many chapters."


class Term:
    def __init__(self, *args: str):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is its controlling terminal, so ^C becomes SIGINT
            os.chdir(ROOT)
            env = {k: v for k, v in os.environ.items() if k != "REVERB_API_KEY"}
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

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            self.drain(0.1)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("chat did not exit")


@pytest.mark.parametrize("mode", ["local", "url"])
def test_chat_streams_keeps_history_and_survives_ctrl_c(mode, server):
    args = ["--temperature", "0", "--max-tokens", "1500"]
    if mode == "url":
        args += ["--url", server.base_url, "--api-key", KEY]
    t = Term(*args)
    t.read_until("/exit leaves")
    t.read_until("> ")
    t.send(LONG + "\n")  # greedy decoding runs this to the token limit: long enough to interrupt
    mark = len(t.out)
    deadline = time.monotonic() + 30
    while len(t.out) < mark + 300 and time.monotonic() < deadline:
        t.drain(0.1)
    assert len(t.out) >= mark + 300, t.out  # tokens are streaming in
    t.send("\x03")  # Ctrl-C stops the answer, not the program
    t.read_until("[stopped]", timeout=30)
    t.read_until("\n> ", timeout=30)
    t.send("say \\\n")  # multi-line input
    t.read_until("... ")
    t.send("hello\n")
    answer = t.read_until("\n> ", timeout=60)
    assert len(answer.strip()) > len("hello") + 5
    t.send("/reset\n")
    t.read_until("(history cleared)")
    t.send("x " * 3000 + "\n")  # too long for the context: an error line, and the chat goes on
    t.read_until("(error:", timeout=30)
    t.read_until("\n> ", timeout=30)
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

    def cancel(self):
        pass

    def close(self):
        pass


def test_history_multiline_and_reset(monkeypatch, capsys):
    from reverb.cli import chat
    from reverb.types import SamplingParams
    lines = iter(["one", "two \\", "lines", "/reset", "three", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    backend = FakeBackend()
    assert chat.run(backend, SamplingParams(), 10, system="be brief") == 0
    assert backend.sent[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}]
    assert backend.sent[1][-3:] == [{"role": "user", "content": "one"}, {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "two \nlines"}]
    assert backend.sent[2] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "three"}]
    assert "(history cleared)" in capsys.readouterr().out


def test_unreachable_server_is_an_error_line_not_a_crash(monkeypatch, capsys):
    from reverb.cli import chat
    from reverb.types import SamplingParams
    lines = iter(["hello", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    backend = chat.RemoteBackend("http://127.0.0.1:1", "k", None)  # nothing listens on port 1
    assert chat.run(backend, SamplingParams(), 5) == 0
    out = capsys.readouterr().out
    assert "(error: cannot reach http://127.0.0.1:1" in out and "Traceback" not in out
