"""The thinking splitter (backends/llama/reasoning.py), the template detection (models/templates.py) and the chat
output's reasoning (output.py): fast, no model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from reverb.backends.llama.output import ChoiceOutput, Constraint
from reverb.backends.llama.reasoning import LEADING, OPENED, ThinkSplitter, opens_thinking, split
from reverb.models.templates import ChatTemplate, thinking_switch, thinks
from reverb.types import Message


def stream(pieces: list[str], opened: bool) -> tuple[str, str]:
    s = ThinkSplitter(opened)
    reasoning, content = [], []
    for p in pieces:
        r, c = s.feed(p)
        reasoning.append(r)
        content.append(c)
    r, c = s.flush()
    return "".join(reasoning) + r, "".join(content) + c


def every_cut(text: str) -> list[list[str]]:
    """The text cut into single characters, and at each position into two pieces."""
    return [list(text)] + [[text[:i], text[i:]] for i in range(len(text) + 1)]


@pytest.mark.parametrize("text,opened,expected", [
    ("I weigh it.</think>The answer.", True, ("I weigh it.", "The answer.")),
    ("\nI weigh it.\n</think>\n\nThe answer.", True, ("I weigh it.", "The answer.")),
    ("<think>\nhmm\n</think>\n\nYes", False, ("hmm", "Yes")),
    ("  <think>hmm</think>Yes", False, ("hmm", "Yes")),
    ("Yes, <think> is text here", False, ("", "Yes, <think> is text here")),
    ("still thinking when cut off", True, ("still thinking when cut off", "")),
    ("<think>cut off</th", False, ("cut off</th", "")),
    ("</think>", True, ("", "")),
    ("a</think>b</think>c", True, ("a", "b</think>c")),          # a second close is answer text
    ("<think><think>x</think>y", False, ("<think>x", "y")),        # no nesting: the first close ends thinking
    ("  <thi", False, ("", "  <thi")),                             # a <think> that never came
    ("  ", False, ("", "  ")),
    ("a < b and c </ d </thinker> e", True, ("a < b and c </ d </thinker> e", "")),
])
def test_split_and_every_way_of_streaming_it(text, opened, expected):
    assert split(text, opened) == expected
    for pieces in every_cut(text):
        assert stream(pieces, opened) == expected, pieces


ALPHABET = st.sampled_from(["<think>", "</think>", "<", "</", "<th", "think", ">", "/", " ", "\n", "a", "é", "</thi",
                            "nk>", "x y", "\t"])


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=24), st.booleans(), st.data())
def test_streaming_agrees_with_the_whole_text_rule(parts, opened, data):
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert stream(pieces, opened) == split(text, opened)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.lists(st.integers(0, 100), max_size=6))
def test_thinking_and_answer_come_back_whole(thought, answer, cuts):
    thought, answer = thought.replace(">", ""), answer   # no '</think>' inside the thought
    text = thought + "</think>" + answer
    cuts = sorted(min(c, len(text)) for c in cuts)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert stream(pieces, True) == (thought.strip(), answer.lstrip())


def test_opens_thinking_reads_the_generation_prompt():
    assert opens_thinking("<|im_start|>assistant\n<think>\n") is True
    assert opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n") is False
    assert opens_thinking("<|im_start|>assistant\n") is None


QWEN3_LIKE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n"
              "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
              "{% endif %}")
R1_LIKE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
           "{% if add_generation_prompt %}assistant: <think>\n{% endif %}")
PLAIN = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}assistant:{% endif %}")


def test_detection_of_a_thinking_template_and_its_switch():
    assert thinks(QWEN3_LIKE) and thinking_switch(QWEN3_LIKE)
    assert thinks(R1_LIKE) and not thinking_switch(R1_LIKE)
    assert not thinks(PLAIN) and not thinking_switch(PLAIN)
    assert thinks("{% if message.reasoning_content %}{{ message.reasoning_content }}{% endif %}")


def test_the_switch_reaches_the_template():
    t = ChatTemplate(QWEN3_LIKE)
    convo = [Message("user", "hi")]
    text = lambda **kw: "".join(s.text for s in t.render(convo, **kw))  # noqa: E731
    assert text() == text(thinking=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert text(thinking=False) == text() + "<think>\n\n</think>\n\n"
    assert opens_thinking(text(thinking=False)) is False
    # a template with no switch renders the same whatever is asked
    r1 = ChatTemplate(R1_LIKE)
    assert "".join(s.text for s in r1.render(convo, thinking=False)) == "".join(s.text for s in r1.render(convo))


def test_choice_output_sends_thinking_as_reasoning_and_tool_calls_only_from_the_answer():
    from reverb.grammar import ToolCallParser
    out = ChoiceOutput(0, (), Constraint(tool_parser=lambda: ToolCallParser(frozenset({"f"})), reasoning=OPENED))
    text = ('I should call <tool_call>{"name": "g"}</tool_call> maybe</think>\n'
            '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>')
    chunks = [c for c in (out.feed(ch.encode()) for ch in text) if c is not None]
    last = out.flush()
    chunks += [last] if last else []
    reasoning = "".join(c.reasoning for c in chunks)
    assert reasoning == 'I should call <tool_call>{"name": "g"}</tool_call> maybe'
    assert "".join(c.text for c in chunks) == ""
    calls = [d for c in chunks for d in c.tool_calls]
    assert calls[0].name == "f" and "".join(d.arguments for d in calls) == '{"x": 1}'
    assert out.called


def test_choice_output_leading_mode_and_stop_strings_apply_to_the_raw_text():
    out = ChoiceOutput(0, ("STOP",), Constraint(reasoning=LEADING))
    chunks = [out.feed(p.encode()) for p in ["<th", "ink>a b", "</thi", "nk> answer ST", "OP ignored"]]
    chunks.append(out.flush())
    chunks = [c for c in chunks if c is not None]
    assert ("".join(c.reasoning for c in chunks), "".join(c.text for c in chunks)) == ("a b", "answer ")
    assert out.stopped


def test_choice_output_without_a_thinking_template_is_unchanged():
    out = ChoiceOutput(0, (), None)
    c = out.feed(b"<think>x</think>y")
    assert (c.text, c.reasoning) == ("<think>x</think>y", "")


def test_an_assistants_thought_sent_back_reaches_a_template_that_renders_it():
    from reverb.api import wire
    from reverb.errors import InvalidRequest
    from reverb.settings import Settings
    convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "mulled"},
             {"role": "user", "content": "q2"}]
    ask, _ = wire.parse({"model": "m", "messages": convo}, wire.CHAT, Settings())
    assert [m.reasoning for m in ask.messages] == ["", "mulled", ""]
    t = ChatTemplate("{% for m in messages %}{{ m.role }}:{% if m.reasoning_content %}<think>"
                     "{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}\n{% endfor %}")
    rendered = "".join(s.text for s in t.render(list(ask.messages)))
    assert rendered == "user:q\nassistant:<think>mulled</think>a\nuser:q2\n"
    for bad in ({"role": "user", "content": "q", "reasoning_content": "x"},
                {"role": "assistant", "content": "a", "reasoning_content": 5}):
        with pytest.raises(InvalidRequest) as e:
            wire.parse({"model": "m", "messages": [bad]}, wire.CHAT, Settings())
        assert e.value.param == "messages[0].reasoning_content"


def _byte_vocabulary():
    from reverb.backends.llama import guidance
    pieces = [bytes([i]) for i in range(256)] + [b"</think>", b"\xff<|end|>"]
    return guidance.Vocabulary(pieces, [257], lambda text: list(text.encode("utf-8")))


def _write(matcher, text: str) -> None:
    for b in text.encode():
        assert matcher.allows(b), text
        matcher.accept(b, bytes([b]))


@pytest.mark.parametrize("mode,thought", [(OPENED, 'maybe <tool_call>\n{"name": "f", then</think>'),
                                          (LEADING, '<think>maybe <tool_call>\n{"name": "f", then</think>')])
def test_a_lazy_tool_grammar_watches_for_calls_only_after_the_thought(mode, thought):
    from dataclasses import replace
    from reverb.backends.llama import guidance
    from reverb.grammar import tool_grammar
    from reverb.types import Tool, Tools
    spec = tool_grammar(Tools((Tool("f"),), "auto"))
    compiled = guidance.compile_grammar(spec, _byte_vocabulary())
    unaware = compiled.matcher()
    _write(unaware, thought.split(", then")[0])
    assert unaware.active                      # without the split, a call mentioned in the thought sets it off
    m = replace(compiled, think=mode).matcher()
    _write(m, thought)
    assert not m.active
    _write(m, '\n<tool_call>\n{"name": "f"')
    assert m.active and not m.allows(ord("x"))  # the grammar now holds: only the call's JSON goes on


class _Letters:
    """Just enough of an engine to tokenize a chat: one token per character."""

    def tokenize(self, text, special):
        return [ord(c) for c in text]

    def control_texts(self):
        return []

    def add_bos(self):
        return False


QWEN3_TOOLS = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content %}<think>\n"
               "{{ m.reasoning_content }}\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
               "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


@pytest.mark.parametrize("source,thinking,mode", [
    (QWEN3_TOOLS, None, LEADING), (QWEN3_TOOLS, True, LEADING), (QWEN3_TOOLS, False, None),
    (R1_LIKE, None, OPENED), (R1_LIKE, False, None),
])
def test_the_split_follows_the_generation_prompt_not_the_history(source, thinking, mode):
    """An earlier turn's rendered thought (here with no message text after it: empty messages)
    says nothing about where the new answer starts: only what add_generation_prompt adds does."""
    from reverb.backends.llama.backend import LlamaBackend
    from reverb.request import Ask
    backend = LlamaBackend(spec=type("Spec", (), {"name": "t"})(), engine=_Letters(), template=ChatTemplate(source),
                           thread=SimpleNamespace(batcher=SimpleNamespace(slots_per_key=None)), ctx=4096)
    convo = (Message("user", "q"), Message("assistant", "", reasoning="need f"), Message("user", ""))
    tokens, split_mode = backend._thinking_prompt(Ask(model=None, messages=convo, thinking=thinking))
    assert split_mode == mode
    text = "".join(map(chr, tokens))
    if source == R1_LIKE and thinking is False:      # no switch: reverb closed the thought it opened
        assert text.endswith("assistant: <think>\n\n</think>\n\n")
