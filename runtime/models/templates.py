"""Chat templates: untrusted Jinja2 from a GGUF or models.toml, rendered in jinja2's immutable sandbox.

A template is compiled once per model. Rendering is bounded in time and output size. The result is a list of
segments that keeps the template's own text (which may spell control tokens such as ``<|im_start|>``) apart from
the text people wrote: the engine tokenizes the first with special-token parsing and the second without, so a
user who types ``<|im_end|>`` gets those characters, never the control token.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ModelLoadError, TemplateError
from ..types import Message

# Used when a GGUF carries no template and models.toml gives none.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MAX_RENDER_SECONDS = 0.5
MAX_RENDER_CHARS = 4_000_000


class _Budget(threading.local):
    deadline: float = float("inf")


class _RenderAborted(Exception):
    pass


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a deadline checked on every call and attribute access.

    Loops in Jinja call ``range`` or touch attributes on each iteration that does anything, so a huge loop
    hits the deadline quickly instead of pinning a CPU.
    """

    budget = _Budget()

    def _tick(self) -> None:
        if time.monotonic() > self.budget.deadline:
            raise _RenderAborted("chat template took too long to render")

    def call(self, __context, __obj, *args, **kwargs):  # noqa: N807 - jinja's signature
        self._tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        self._tick()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj, attribute):
        # jinja2 returns a quiet Undefined for unsafe attributes; a template that even tries is refused.
        raise SecurityError(f"access to attribute {attribute!r} is not allowed")


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template refused the conversation: {message}", param="messages")


@dataclass(frozen=True)
class Segment:
    text: str
    # True: text from a message (tokenize without special-token parsing); False: template text; None: both mixed
    # (the template transformed message text, so the two cannot be told apart; see ModelRuntime.tokenize_chat)
    user: bool | None


class ChatTemplate:
    """A compiled chat template. ``render`` raises TemplateError; the constructor raises ModelLoadError."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._template = env.from_string(source)
        except JinjaTemplateError as e:
            raise ModelLoadError(f"chat template does not compile: {e}") from None
        self._env = env
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Render once at load: a template that escapes the sandbox or never finishes is refused now, before any
        # request, and the side effect it tried never happens (the sandbox blocks it).
        try:
            self.render([Message("system", "probe"), Message("user", "probe")])
        except TemplateError:
            pass  # raise_exception on the probe conversation is a legitimate template choice

    def render(self, messages: list[Message], add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> list[Segment]:
        """The prompt as segments. The template sees the real text (its checks and raise_exception apply); a
        second render with markers in place of the text tells which parts of the result came from messages.

        As Hugging Face's ``apply_chat_template`` does, ``tools`` (OpenAI tool definitions) is handed to the
        template, and messages carry ``tool_calls`` (arguments as a JSON object when they parse), ``tool_call_id``
        and ``name``. Text rendered from those is template text: the caller checks it for control tokens."""
        real = self._render_text([_as_dict(m, m.content) for m in messages], add_generation_prompt, tools)
        nonce = secrets.token_hex(6)
        marks = [f"\ue000{nonce}:{i}\ue001" if m.content else "" for i, m in enumerate(messages)]
        convo = [_as_dict(m, marks[i] or m.content) for i, m in enumerate(messages)]
        try:
            segments = _split(self._render_text(convo, add_generation_prompt, tools), marks, messages)
        except TemplateError:
            segments = []
        if "".join(seg.text for seg in segments) != real:
            return [Segment(real, user=None)]
        return segments

    def _render_text(self, convo: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        self._env.budget.deadline = time.monotonic() + MAX_RENDER_SECONDS
        out: list[str] = []
        size = 0
        try:
            for piece in self._template.generate(messages=convo, add_generation_prompt=add_generation_prompt,
                                                  bos_token=self.bos_token, eos_token=self.eos_token,
                                                  tools=tools or None):
                size += len(piece)
                if size > MAX_RENDER_CHARS:
                    raise _RenderAborted("chat template output is too large")
                out.append(piece)
        except TemplateError:
            raise
        except (SecurityError, _RenderAborted) as e:
            raise ModelLoadError(f"chat template is unsafe: {e}") from None
        except (JinjaTemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                ZeroDivisionError, OverflowError, RecursionError, MemoryError) as e:
            raise TemplateError(f"chat template failed on this conversation: {type(e).__name__}",
                                param="messages") from None
        finally:
            self._env.budget.deadline = float("inf")
        return "".join(out)


def _as_dict(m: Message, content: str) -> dict:
    """A message as chat templates expect it (Hugging Face's conventions)."""
    out: dict = {"role": m.role, "content": content}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _arguments(text: str):
    # Templates render arguments with `| tojson`, expecting an object; a string that is not JSON stays a string.
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _split(text: str, marks: list[str], messages: list[Message]) -> list[Segment]:
    """Cut the rendered text at the content markers, putting each message's real text back in."""
    for m in marks:
        if m and text.count(m) > 1:
            raise TemplateError("chat template repeats a message; refused", param="messages")
    segments: list[Segment] = []
    rest = text
    while True:
        positions = [(rest.find(m), i) for i, m in enumerate(marks) if m and m in rest]  # empty: not marked
        if not positions:
            break
        pos, i = min(positions)
        if pos:
            segments.append(Segment(rest[:pos], user=False))
        segments.append(Segment(messages[i].content, user=True))
        rest = rest[pos + len(marks[i]):]
    if "\ue000" in rest and any(m.split(":")[0] in rest for m in marks if m):
        raise TemplateError("chat template altered message text; refused", param="messages")
    if rest:
        segments.append(Segment(rest, user=False))
    return segments


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)
