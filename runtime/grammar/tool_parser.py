"""Turn generated text into OpenAI content + tool_calls, incrementally (for streaming) or at once.

Recognises ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, opened exactly as the grammar
writes them and its lazy trigger fires on (``tools.TC_WS`` then ``{"name": "``, one optional space where the
grammar allows one): a block the trigger would not have put under the grammar is never a call, so the arguments of
every call were constrained. A call streams: the header delta (index, id, type, name) as soon as the name is
complete, then the arguments text in pieces. Any other block (another key order, arguments as a string, an
unknown function) stays content.
"""
import json
import re
import secrets
import string

from .tools import CLOSE, OPEN, OPENING_PREFIX, TC_WS, prefix_pattern

_NAME = r'"((?:[^"\\]|\\.)*)"'
_HEAD = re.compile(TC_WS + r'\{ ?"name": ?' + _NAME + r', ?"arguments": ?')
_OPENING_PREFIX = re.compile(OPENING_PREFIX)
_OPEN_NAME = re.compile(TC_WS + r'\{ ?"name": ?"(?:[^"\\]|\\.)*\\?')          # the name still being written
_AFTER_NAME = re.compile(TC_WS + r'\{ ?"name": ?' + _NAME + prefix_pattern([",", " ?", *'"arguments":', " ?"]))
_TAIL = re.compile(r"\s*\}\s*" + re.escape(CLOSE))
_ALNUM = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallParser:
    """feed(text) -> list of OpenAI delta dicts ({'content': ...} or {'tool_calls': [...]});
    finish() flushes. ``content`` and ``tool_calls`` hold the aggregated (non-streaming) result."""

    def __init__(self, names=None, id_factory=new_call_id):
        self.names, self.new_id = names, id_factory
        self.buf, self.state, self.out = "", "text", []
        self.content_parts: list[str] = []
        self.tool_calls: list[dict] = []
        self.ws_hold = self.block_ws = ""  # whitespace held back: dropped if a tool call follows
        self._scan = None

    @property
    def content(self) -> str | None:
        text = "".join(self.content_parts).strip()
        return text or None

    def feed(self, text: str) -> list[dict]:
        self.buf += text
        self.out = []
        progressed = True
        while progressed:
            progressed = getattr(self, "_" + self.state)(final=False)
        return self.out

    def finish(self) -> list[dict]:
        self.out = []
        while getattr(self, "_" + self.state)(final=True):
            pass
        if self.state == "head":  # an unfinished block never became a call: it is content
            self._emit_content(self.block_ws + OPEN + self.buf)
        elif self.state == "text":
            self._emit_content(self.buf)
        self.buf = ""
        return self.out

    # --- states: each returns True when it consumed input and the loop should run again

    def _emit_content(self, text: str):
        if not text:
            return
        text, self.ws_hold = self.ws_hold + text, ""
        body = text.rstrip()
        self.ws_hold = text[len(body):]
        if body:
            if not self.content_parts and not self.tool_calls:
                body = body.lstrip()
            if body:
                self.content_parts.append(body)
                self.out.append({"content": body})

    def _text(self, final) -> bool:
        i = self.buf.find(OPEN)
        if i >= 0:
            self._emit_content(self.buf[:i])
            # the whitespace before the tag is dropped, unless the block turns out not to be a call
            self.block_ws, self.ws_hold = self.ws_hold, ""
            self.buf, self.state = self.buf[i + len(OPEN):], "head"
            return True
        keep = 0 if final else _partial_suffix(self.buf, OPEN)
        self._emit_content(self.buf[:len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def _head(self, final) -> bool:
        m = _HEAD.match(self.buf)
        if m:
            try:
                name = json.loads(f'"{m.group(1)}"')
            except ValueError:
                name = None
            nxt = self.buf[m.end():m.end() + 1]
            if nxt == "" and not final:
                return False  # wait for the arguments' first character
            if nxt == "{" and isinstance(name, str) and (self.names is None or name in self.names):
                self._start_call(name)
                self.buf, self.state = self.buf[m.end():], "args"
                self._scan = [0, False, False]  # depth, in string, escaped
                return True
        elif not final and len(self.buf) < 400 and any(
                rx.fullmatch(self.buf) for rx in (_OPENING_PREFIX, _OPEN_NAME, _AFTER_NAME)):
            return False  # still a prefix of a call's opening
        # Not a call: the tag is text, and the rest is read again (it may hold the next tag)
        self._emit_content(self.block_ws + OPEN)
        self.block_ws, self.state = "", "text"
        return True

    def _start_call(self, name):
        call = {"id": self.new_id(), "type": "function", "function": {"name": name, "arguments": ""}}
        self.tool_calls.append(call)
        self.out.append({"tool_calls": [{"index": len(self.tool_calls) - 1, **call,
                                         "function": {"name": name, "arguments": ""}}]})

    def _emit_args(self, text):
        if text:
            self.tool_calls[-1]["function"]["arguments"] += text
            self.out.append({"tool_calls": [{"index": len(self.tool_calls) - 1, "function": {"arguments": text}}]})

    def _args(self, final) -> bool:
        depth, in_str, esc = self._scan
        for i, ch in enumerate(self.buf):
            if in_str:
                esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
            elif ch == '"':
                in_str = True
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    self._emit_args(self.buf[:i + 1])
                    self.buf, self.state = self.buf[i + 1:], "tail"
                    return True
        self._scan = [depth, in_str, esc]
        self._emit_args(self.buf)
        self.buf = ""
        return False

    def _tail(self, final) -> bool:
        m = _TAIL.match(self.buf)
        if m:
            self.buf, self.state = self.buf[m.end():], "text"
            return True
        j = self.buf.find(CLOSE)
        if j >= 0 or final:  # junk before the close tag: the call is already out, skip it
            self.buf, self.state = (self.buf[j + len(CLOSE):] if j >= 0 else ""), "text"
            return True
        return False


def parse_tool_calls(text: str, names=None, id_factory=new_call_id) -> tuple[str | None, list[dict]]:
    """Non-streaming: (content, tool_calls) for a whole generated text."""
    p = ToolCallParser(names, id_factory)
    p.feed(text)
    p.finish()
    return p.content, p.tool_calls
