"""A thinking model's text -> (reasoning, content), as it streams.

Templates that think (Qwen3, the DeepSeek-R1 distills) have the model write ``<think>...</think>`` before its
answer, or open ``<think>`` themselves at the end of the generation prompt. ``ThinkSplitter`` takes the answer's
text in any pieces (a marker may arrive across several tokens) and returns what is thinking and what is answer:

- ``opened``: the prompt ended inside ``<think>``, so everything up to ``</think>`` is thinking;
- otherwise only a ``<think>`` at the very start of the answer (after whitespace) opens thinking; text that starts
  any other way is all answer, and a ``<think>`` later in it is plain text.

The markers themselves are dropped, and so is the whitespace next to them (the thinking is trimmed at both ends,
the answer's leading whitespace after ``</think>`` is dropped), as llama-server does. An answer cut off before
``</think>`` is all thinking. ``split`` is the same rule on a whole text; the streaming splitter always agrees with
it, whatever the pieces (tests/test_reasoning_split.py).
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"

# Constraint.reasoning: how a choice's text is split
OPENED = "opened"     # the prompt opened <think>: thinking first, until </think>
LEADING = "leading"   # the model may open <think> itself, as the first thing it writes


def split(text: str, opened: bool) -> tuple[str, str]:
    """The whole answer's (reasoning, content): the rule ``ThinkSplitter`` applies as text streams."""
    if not opened:
        rest = text.lstrip()
        if not rest.startswith(OPEN):
            return "", text
        text = rest[len(OPEN):]
    reasoning, closed, content = text.partition(CLOSE)
    return reasoning.strip(), content.lstrip() if closed else ""


def opens_thinking(prompt_tail: str) -> bool | None:
    """Where a rendered generation prompt leaves the model: True inside ``<think>`` (it ends with an unclosed
    ``<think>``), False after a closed one (thinking switched off by the template: ``<think></think>``), None when
    it says nothing about thinking."""
    opened, closed = prompt_tail.rfind(OPEN), prompt_tail.rfind(CLOSE)
    if opened < 0 and closed < 0:
        return None
    return opened > closed


_START, _REASONING, _AFTER, _CONTENT = range(4)


class ThinkSplitter:
    def __init__(self, opened: bool):
        self._state = _REASONING if opened else _START
        self._held = ""          # text not yet known to be thinking or answer (a marker's first characters)
        self._fresh = True       # no thinking sent yet: its leading whitespace is dropped
        self._space = ""         # thinking's trailing whitespace, sent only if more thinking follows

    def feed(self, text: str) -> tuple[str, str]:
        """More of the answer's text; the (reasoning, content) that may be sent now."""
        self._held += text
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            held = self._held
            if self._state == _START:
                rest = held.lstrip()
                if rest.startswith(OPEN):
                    self._held, self._state = rest[len(OPEN):], _REASONING
                    continue
                if OPEN.startswith(rest):       # only whitespace so far, or the start of <think>: wait
                    break
                self._state = _CONTENT
            elif self._state == _REASONING:
                cut = held.find(CLOSE)
                if cut >= 0:
                    reasoning.append(self._thought(held[:cut]))
                    self._space, self._held, self._state = "", held[cut + len(CLOSE):], _AFTER
                    continue
                keep = _partial(held, CLOSE)
                reasoning.append(self._thought(held[:len(held) - keep]))
                self._held = held[len(held) - keep:]
                break
            elif self._state == _AFTER:
                rest = held.lstrip()
                self._held = rest
                if not rest:
                    break
                self._state = _CONTENT
            else:
                content.append(held)
                self._held = ""
                break
        return "".join(reasoning), "".join(content)

    def flush(self, text: str = "") -> tuple[str, str]:
        """The last text at the end of the answer, and whatever was held back."""
        reasoning, content = self.feed(text)
        held, self._held = self._held, ""
        if self._state == _REASONING:
            reasoning += self._thought(held)    # a marker's start that never finished is thinking
        elif self._state == _START:
            content += held                     # whitespace, or the start of a <think> that never came
        return reasoning, content

    def _thought(self, text: str) -> str:
        if self._fresh:
            text = text.lstrip()
            if not text:
                return ""
            self._fresh = False
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body):]
        return body


def _partial(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
