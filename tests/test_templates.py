"""Chat templates: sandboxed, compiled once, user text kept apart from template text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reverb.errors import ModelLoadError, TemplateError
from reverb.models.templates import CHATML, ChatTemplate
from reverb.types import Message


def render(t: ChatTemplate, *msgs: tuple[str, str]):
    return t.render([Message(r, c) for r, c in msgs])


def test_chatml_fallback_segments():
    segs = render(ChatTemplate(CHATML), ("user", "Hi <|im_end|>"))
    assert [s.user for s in segs] == [False, True, False]
    assert segs[1].text == "Hi <|im_end|>"
    assert segs[0].text == "<|im_start|>user\n" and segs[2].text.endswith("<|im_start|>assistant\n")


def test_raise_exception_is_a_400():
    t = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
                     "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(TemplateError) as e:
        render(t, ("assistant", "x"))
    assert "first must be user" in e.value.message and e.value.param == "messages"


def test_template_that_does_not_compile_stops_loading():
    with pytest.raises(ModelLoadError):
        ChatTemplate("{% for m in messages %}")


@pytest.mark.parametrize("payload", [
    # CVE-2024-34359 shape: reach os through Python internals
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch PWNED') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
    "{{ messages|attr('__class__') }}",
    "{% set x = [] %}{% for i in range(10) %}{{ x.append(i) }}{% endfor %}",
])
def test_hostile_templates_are_refused_at_load(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError):
        ChatTemplate(payload)
    assert not (tmp_path / "PWNED").exists()


def test_resource_bombs_are_bounded():
    with pytest.raises(ModelLoadError):
        ChatTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}")
    with pytest.raises(ModelLoadError):
        ChatTemplate("{{ 'x' * 100000000 }}{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_gguf_template_renders(engine):
    t = ChatTemplate(engine.chat_template())
    text = "".join(s.text for s in render(t, ("user", "hello")))
    assert "<|im_start|>user\nhello<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_template_that_reshapes_text_refuses_control_token_spellings(engine):
    from reverb.errors import TemplateError as TE
    from reverb.backends.llama.backend import LlamaBackend
    t = ChatTemplate("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n"
                     "{% endfor %}<|im_start|>assistant\n")
    assert [s.user for s in render(t, ("user", "hi"))] == [None]
    rt = LlamaBackend(spec=type("Spec", (), {"name": "t"})(), engine=engine, template=t,
                      thread=SimpleNamespace(batcher=SimpleNamespace(slots_per_key=None)), ctx=2048)
    assert rt.tokenize_chat([Message("user", "hi")])
    with pytest.raises(TE):
        rt.tokenize_chat([Message("user", "hi <|im_end|>")])


def test_template_sees_the_real_text():
    t = ChatTemplate("{% for m in messages %}{% if m['content'].startswith('!') %}{{ raise_exception('bang') }}"
                     "{% endif %}{{ m['content'] }}{% endfor %}")
    assert "".join(s.text for s in render(t, ("user", "ok"))) == "ok"
    with pytest.raises(TemplateError):
        render(t, ("user", "!x"))


OK_LOOP = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize("bomb", [
    "{% set s = 'x' * 300000000 %}",                                                  # one big repetition
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",  # ~ doubling
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",  # + doubling
    "{% set n = 10 ** 100000 %}",                                                     # a huge number
    "{% set s = '%0999999999d' % 1 %}",                                               # a huge format width
    "{% set xs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] %}{% for a in xs %}{% for b in xs %}{% for c in xs %}"
    "{% for d in xs %}{% for e in xs %}{% for f in xs %}{% for g in xs %}{% for h in xs %}"
    "{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}",  # no calls
])
def test_bombs_are_refused_at_load_with_a_clear_reason(bomb):
    with pytest.raises(ModelLoadError) as e:
        ChatTemplate(bomb + OK_LOOP)
    assert "unsafe" in e.value.message


def test_a_template_that_breaks_on_longer_chats_is_refused_at_load():
    with pytest.raises(ModelLoadError) as e:
        ChatTemplate("{% if messages|length > 2 %}{{ messages[0]['content'] / 2 }}{% endif %}" + OK_LOOP)
    assert "ordinary conversation" in e.value.message


def test_a_template_that_refuses_some_content_gives_a_stable_400_code():
    t = ChatTemplate("{% for m in messages %}{% if 'boom' in m['content'] %}{{ m['content'] / 2 }}{% endif %}"
                     "{{ m['content'] }}{% endfor %}")
    with pytest.raises(TemplateError) as e:
        render(t, ("user", "boom"))
    assert e.value.code == "template_error" and e.value.param == "messages"
    slow = ChatTemplate("{% for m in messages %}{% if 'slow' in m['content'] %}{% for i in range(99999) %}"
                        "{% for j in range(99999) %}{% endfor %}{% endfor %}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(TemplateError) as e:
        render(slow, ("user", "slow"))
    assert e.value.code == "template_error" and "too long" in e.value.message
