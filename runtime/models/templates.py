"""Chat templates: untrusted Jinja2 from a GGUF or models.toml, rendered in jinja2's immutable sandbox.

A template is compiled once per model. Rendering is bounded in time and output size. The result is a list of
segments that keeps the template's own text (which may spell control tokens such as ``<|im_start|>``) apart from
the text people wrote: the engine tokenizes the first with special-token parsing and the second without, so a
user who types ``<|im_end|>`` gets those characters, never the control token.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.compiler import CodeGenerator
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
MAX_VALUE_LEN = 1_000_000        # longest string or list one template operation may build
MAX_INT_BITS = 4096              # largest number one template operation may build
TEMPLATE_FILE = "<template>"     # the file name jinja2 gives compiled template code


class _Budget(threading.local):
    deadline: float = float("inf")


class _RenderAborted(Exception):
    pass


class _Raised(TemplateError):
    """The template itself called raise_exception: its own, legitimate refusal of a conversation."""


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to the environment's size-checked join instead of a bare str.join."""

    def visit_Concat(self, node, frame) -> None:  # noqa: N802 - jinja's visitor name
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus caps on what one operation may build (``*``, ``**``, ``+``, ``%``, ``~``),
    so ``'x' * 300000000`` fails at once instead of holding 300 MB. The wall-clock deadline is enforced by
    ``_deadline_tracer`` on every line of template code, so even a loop that calls nothing stops in time."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])
    budget = _Budget()

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                _check_len(len(seq) * max(n, 0))
            elif isinstance(left, int) and isinstance(right, int):
                _check_bits(abs(left).bit_length() + abs(right).bit_length())
        elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                _check_bits(max(abs(left).bit_length(), 1) * right)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check_len(len(left) + len(right))
        elif operator == "%" and isinstance(left, str) and re.search(r"%[-+ #0]*\d{5,}", left):
            raise _RenderAborted("a format width in the chat template is too large")
        return super().call_binop(context, operator, left, right)

    def bounded_concat(self, parts) -> str:
        texts = [str(p) for p in parts]
        _check_len(sum(map(len, texts)))
        return "".join(texts)

    def unsafe_undefined(self, obj, attribute):
        # jinja2 returns a quiet Undefined for unsafe attributes; a template that even tries is refused.
        raise SecurityError(f"access to attribute {attribute!r} is not allowed")


def _check_len(n: int) -> None:
    if n > MAX_VALUE_LEN:
        raise _RenderAborted("a value in the chat template grows too large")


def _check_bits(n: int) -> None:
    if n > MAX_INT_BITS:
        raise _RenderAborted("a number in the chat template grows too large")


def _deadline_tracer(frame, event, arg):
    """sys.settrace hook while rendering: traces only frames of template code, and stops them at the deadline."""
    if frame.f_code.co_filename != TEMPLATE_FILE:
        return None

    def check(frame, event, arg):
        if time.monotonic() > _BoundedSandbox.budget.deadline:
            raise _RenderAborted("chat template took too long to render")
        return check
    return check


def _raise_exception(message: str) -> None:
    raise _Raised(f"chat template refused the conversation: {message}", param="messages")


# Conversations every template must render at load: with and without a system message, and many turns.
PROBES: tuple[tuple[Message, ...], ...] = (
    (Message("user", "probe"),),
    (Message("system", "probe"), Message("user", "probe")),
    (Message("user", "probe"), Message("assistant", "probe"), Message("user", "probe")),
    (Message("system", "probe"), *[Message(r, "probe %d" % i) for i in range(6) for r in ("user", "assistant")],
     Message("user", "last")),
)


@dataclass(frozen=True)
class Segment:
    text: str
    # True: text from a message (tokenize without special-token parsing); False: template text; None: both mixed
    # (the template transformed message text, so the two cannot be told apart; see LlamaBackend.tokenize_chat)
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
        # Render the probe conversations at load: a template that escapes the sandbox, never finishes or breaks
        # on an ordinary conversation is refused now, before any request, and the side effect it tried never
        # happens (the sandbox blocks it). raise_exception is the template's own choice; it may refuse some
        # shapes, not all.
        refused = 0
        for convo in PROBES:
            try:
                self.render(list(convo))
            except _Raised:
                refused += 1
            except _Unsafe as e:
                raise ModelLoadError(e.message) from None
            except TemplateError as e:
                raise ModelLoadError(f"chat template fails on an ordinary conversation of {len(convo)} "
                                     f"messages: {e.message}") from None
        if refused == len(PROBES):
            raise ModelLoadError("chat template refuses every ordinary conversation")

    def render(self, messages: list[Message], add_generation_prompt: bool = True,
               tools: list[dict] | None = None, thinking: bool | None = None) -> list[Segment]:
        """The prompt as segments. The template sees the real text (its checks and raise_exception apply); a
        second render with markers in place of the text tells which parts of the result came from messages.

        As Hugging Face's ``apply_chat_template`` does, ``tools`` (OpenAI tool definitions) is handed to the
        template, and messages carry ``tool_calls`` (arguments as a JSON object when they parse), ``tool_call_id``
        and ``name``. Text rendered from those is template text: the caller checks it for control tokens.
        ``thinking`` is handed to a thinking template as ``enable_thinking`` (None: not at all, its default)."""
        switch = {} if thinking is None else {"enable_thinking": thinking}
        real = self._render_text([_as_dict(m, m.content) for m in messages], add_generation_prompt, tools, switch)
        nonce = secrets.token_hex(6)
        marks = [f"\ue000{nonce}:{i}\ue001" if m.content else "" for i, m in enumerate(messages)]
        convo = [_as_dict(m, marks[i] or m.content) for i, m in enumerate(messages)]
        try:
            segments = _split(self._render_text(convo, add_generation_prompt, tools, switch), marks, messages)
        except TemplateError:
            segments = []
        if "".join(seg.text for seg in segments) != real:
            return [Segment(real, user=None)]
        return segments

    def generation_prompt(self, messages: list[Message], rendered: str, tools: list[dict] | None = None,
                          thinking: bool | None = None) -> str:
        """What ``add_generation_prompt`` added to ``rendered`` (this conversation's ``render``): where the model
        starts writing, e.g. ``<|im_start|>assistant\n<think>\n``. '' when the template does not simply append it."""
        switch = {} if thinking is None else {"enable_thinking": thinking}
        try:
            bare = self._render_text([_as_dict(m, m.content) for m in messages], False, tools, switch)
        except TemplateError:
            return ""
        return rendered[len(bare):] if rendered.startswith(bare) else ""

    def _render_text(self, convo: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None,
                     switch: dict | None = None) -> str:
        self._env.budget.deadline = time.monotonic() + MAX_RENDER_SECONDS
        previous = sys.gettrace()
        sys.settrace(_deadline_tracer)
        out: list[str] = []
        size = 0
        try:
            for piece in self._template.generate(messages=convo, add_generation_prompt=add_generation_prompt,
                                                  bos_token=self.bos_token, eos_token=self.eos_token,
                                                  tools=tools or None, **(switch or {})):
                size += len(piece)
                if size > MAX_RENDER_CHARS:
                    raise _RenderAborted("chat template output is too large")
                out.append(piece)
        except TemplateError:
            raise
        except (SecurityError, _RenderAborted) as e:
            raise _Unsafe(str(e)) from None
        except (JinjaTemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                ZeroDivisionError, OverflowError, RecursionError, MemoryError) as e:
            raise TemplateError(f"chat template failed on this conversation: {type(e).__name__}",
                                param="messages") from None
        finally:
            sys.settrace(previous)
            self._env.budget.deadline = float("inf")
        return "".join(out)


def thinks(source: str) -> bool:
    """Whether a template's model thinks before it answers (``<think>...</think>``, as Qwen3 and the DeepSeek-R1
    distills): the template writes or strips the markers, has the switch, or renders ``reasoning_content``."""
    return any(word in source for word in ("<think>", "</think>", "enable_thinking", "reasoning_content"))


def thinking_switch(source: str) -> bool:
    """Whether a thinking template can be told not to think (Qwen3's ``enable_thinking``)."""
    return "enable_thinking" in source


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
    if m.reasoning:
        out["reasoning_content"] = m.reasoning
    return out


def _arguments(text: str):
    # Templates render arguments with `| tojson`, expecting an object; a string that is not JSON stays a string.
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


class _Unsafe(TemplateError):
    """The template broke a sandbox rule (a forbidden attribute, the deadline, a size cap). At load time this
    refuses the model; at request time it is the request's stable ``template_error``."""

    def __init__(self, message: str):
        super().__init__(f"chat template is unsafe: {message}", param="messages")


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
