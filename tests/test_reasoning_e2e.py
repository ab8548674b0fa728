"""A thinking model end to end: a tiny Qwen2 checkpoint (random weights, tests/qwen2_tiny.py) converted with a
Qwen3-like template that opens ``<think>`` in its generation prompt and has the ``enable_thinking`` switch, served
twice: splitting thinking out (the default) and with ``--no-split-reasoning`` (the raw text, markers and all).

A random model never writes ``</think>`` by itself: a ``logit_bias`` on that token makes it appear at seeded, random
places, and its end tokens are banned so each answer runs to ``max_tokens``. Every assertion compares the split
answer with the raw one of the same seed, never with a fixed text.
"""

from __future__ import annotations

import json

import openai
import pytest

from reverb.backends.llama.engine import Engine, EngineConfig

from . import qwen2_tiny
from .conftest import KEY, SESSION_OWNED, Server, reverb

pytestmark = pytest.mark.model

# Opens <think> in the generation prompt (as the DeepSeek-R1 distills and Qwen3's thinking models); the switch closes
# the thought in the prompt (as Qwen3's enable_thinking=false does).
SWITCH = "</think>\n\n"
THINKER = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n"
           "{% if enable_thinking is defined and enable_thinking is false %}" + SWITCH + "{% endif %}{% endif %}")
# The same with no switch: reverb closes the thought itself when thinking is off (backend._thinking_prompt). It
# renders an assistant's earlier thought, sent back as reasoning_content.
NO_SWITCH = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.reasoning_content %}<think>"
             "{{ m.reasoning_content }}</think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
THOUGHT = "<think>mulled</think>"
CLOSED_BY_REVERB = "\n</think>\n\n"
MAX_TOKENS = 24
SEEDS = range(8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("thinker")
    qwen2_tiny.write(d / "hf", template=THINKER, added=("<think>", "</think>"))
    out = reverb("convert", str(d / "hf"), "-o", str(d / "thinker.gguf"), "--outtype", "f32")
    assert out.returncode == 0, out.stderr
    e = Engine(d / "thinker.gguf", EngineConfig(n_ctx=64, n_seq=1, n_threads=1, n_threads_batch=1))
    try:
        ids = {t: e.tokenize(t, special=True) for t in ("</think>", "<|im_end|>", "<|endoftext|>")}
        counts = {t: len(e.tokenize(t, special=True)) for t in (SWITCH, CLOSED_BY_REVERB, THOUGHT)}
        assert "enable_thinking" in e.chat_template()
    finally:
        e.close()
    assert all(len(v) == 1 for v in ids.values()), ids   # each a single token, as in Qwen3
    toml = d / "models.toml"
    toml.write_text('default = "thinker"\n[models.thinker]\nsource = "path"\nfile = "thinker.gguf"\nctx = 2048\n'
                    '[models.r1]\nsource = "path"\nfile = "thinker.gguf"\nctx = 2048\n'
                    f"chat_template = {json.dumps(NO_SWITCH)}\n")
    return toml, {t: v[0] for t, v in ids.items()}, counts


def _start(workdir, *args) -> Server:
    srv = Server(workdir, *args).start()
    SESSION_OWNED.add(srv.proc.pid)
    return srv


@pytest.fixture(scope="module")
def servers(model, tmp_path_factory):
    """The same model split and raw; deterministic, so one seed gives the same tokens in both processes whatever
    threads each uses."""
    toml = model[0]
    split = raw = None
    try:
        split = _start(tmp_path_factory.mktemp("split"), "--models", str(toml), "--parallel", "2", "--deterministic",
                       "--model", "thinker", "--model", "r1")
        raw = _start(tmp_path_factory.mktemp("raw"), "--models", str(toml), "--parallel", "2", "--deterministic",
                     "--no-split-reasoning")
        yield split, raw
    finally:
        for srv in (split, raw):
            if srv is not None:
                srv.stop()


def body(ids: dict, seed: int, **kw) -> dict:
    bias = {str(ids["</think>"]): 8, str(ids["<|im_end|>"]): -100, str(ids["<|endoftext|>"]): -100}
    return {"model": "thinker", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS,
            "temperature": 1.0, "seed": seed, "logit_bias": bias, **kw}


def post(srv: Server, payload: dict) -> dict:
    with srv.client() as http:
        r = http.post("/v1/chat/completions", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def answers(servers, model):
    """For each seed: (split message, raw text, split usage, raw usage)."""
    split, raw = servers
    ids = model[1]
    out = {}
    for seed in SEEDS:
        a, b = post(split, body(ids, seed)), post(raw, body(ids, seed))
        out[seed] = (a["choices"][0]["message"], b["choices"][0]["message"], a["usage"], b["usage"])
    return out


def test_thinking_is_split_out_of_what_the_model_wrote(answers):
    both = 0
    for seed, (msg, raw_msg, usage, raw_usage) in answers.items():
        raw = raw_msg["content"]
        assert "reasoning_content" not in raw_msg          # splitting off: the markers stay in the text
        # The prompt opened <think>: everything up to the first </think> is thinking, the rest the answer.
        thought, closed, answer = raw.partition("</think>")
        assert msg.get("reasoning_content", "") == thought.strip(), seed
        assert msg["content"] == (answer.lstrip() if closed else ""), seed
        # Thinking tokens are completion tokens, billed alike; the prompt is the same.
        assert usage == raw_usage and usage["completion_tokens"] == MAX_TOKENS
        both += bool(closed and thought.strip() and answer.strip())
    assert both, "no seed gave both a thought and an answer: the bias on </think> no longer exercises the split"


def test_streamed_thinking_arrives_before_the_answer_and_equals_the_whole(servers, model, answers):
    split, _ = servers
    ids = model[1]
    seed = next(s for s, (m, *_) in answers.items() if m.get("reasoning_content") and m["content"])
    client = sdk(split)
    reasoning, content, order = [], [], []
    for chunk in client.chat.completions.create(**body(ids, seed), stream=True):
        delta = chunk.choices[0].delta
        r = getattr(delta, "reasoning_content", None)
        if r:
            reasoning.append(r)
            order.append("r")
        if delta.content:
            content.append(delta.content)
            order.append("c")
    msg = answers[seed][0]
    assert "".join(reasoning) == msg["reasoning_content"] and "".join(content) == msg["content"]
    assert order == sorted(order, key="rc".index)            # no thought after the answer began
    whole = client.chat.completions.create(**body(ids, seed))
    assert whole.choices[0].message.reasoning_content == msg["reasoning_content"]
    assert whole.choices[0].message.content == msg["content"]


def test_reasoning_effort_switches_the_templates_thinking_off(servers, model):
    split, raw = servers
    ids, counts = model[1], model[2]
    tokens = {}
    for effort in (None, "none", "minimal", "low", "high"):
        extra = {} if effort is None else {"reasoning_effort": effort}
        a, b = post(split, body(ids, 3, **extra)), post(raw, body(ids, 3, **extra))
        tokens[effort] = a["usage"]["prompt_tokens"]
        if effort in ("none", "minimal"):
            # The template closed the thought in the prompt: what the model writes is all answer, split or not.
            assert "reasoning_content" not in a["choices"][0]["message"]
            assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert tokens[None] == tokens["low"] == tokens["high"]
    assert tokens["none"] == tokens["minimal"] == tokens[None] + counts[SWITCH]


def test_a_template_with_no_switch_gets_its_thought_closed_by_reverb(servers, model):
    split, _ = servers
    ids, counts = model[1], model[2]
    on = post(split, {**body(ids, 1), "model": "r1"})
    off = post(split, {**body(ids, 1), "model": "r1", "reasoning_effort": "none"})
    assert off["usage"]["prompt_tokens"] == on["usage"]["prompt_tokens"] + counts[CLOSED_BY_REVERB]
    assert "reasoning_content" not in off["choices"][0]["message"]


def test_a_constrained_answer_is_written_with_thinking_off(servers, model):
    split, _ = servers
    ids, counts = model[1], model[2]
    on = post(split, body(ids, 2))
    fmt = post(split, body(ids, 2, response_format={"type": "json_object"}))
    # The grammar holds the answer from its first token: the prompt is the one thinking off gives, the answer JSON
    # (the bias on </think> cannot put one in it), none of it thinking.
    assert fmt["usage"]["prompt_tokens"] == on["usage"]["prompt_tokens"] + counts[SWITCH]
    message = fmt["choices"][0]["message"]
    assert "reasoning_content" not in message and message["content"].startswith("{")
    assert "</think>" not in message["content"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    call = post(split, body(ids, 2, tools=[tool], tool_choice="required", max_tokens=64))
    message = call["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert call["choices"][0]["finish_reason"] in ("tool_calls", "length")


def test_a_model_that_does_not_think_accepts_reasoning_effort_with_no_effect(server):
    with server.client() as http:
        rows = [http.post("/v1/chat/completions", json={
            "model": "smollm2-135m", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6,
            "temperature": 0, **({} if e is None else {"reasoning_effort": e})}).json() for e in (None, "none", "high")]
    assert all("reasoning_content" not in r["choices"][0]["message"] for r in rows)
    assert len({json.dumps([r["choices"][0]["message"]["content"], r["usage"]]) for r in rows}) == 1


def test_an_assistants_thought_sent_back_is_rendered_and_checked(servers, model):
    split, _ = servers
    ids, counts = model[1], model[2]
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Again"}]
    plain = post(split, {**body(ids, 1, max_tokens=2), "model": "r1", "messages": turns})
    turns[1]["reasoning_content"] = "mulled"
    sent = post(split, {**body(ids, 1, max_tokens=2), "model": "r1", "messages": turns})
    assert sent["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] + counts[THOUGHT]
    turns[1]["reasoning_content"] = "x<|im_end|>y"     # a control token's text, rendered as template text: refused
    with split.client() as http:
        r = http.post("/v1/chat/completions", json={**body(ids, 1, max_tokens=2), "model": "r1", "messages": turns})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text


def test_with_tools_offered_the_model_still_thinks_first(servers, model):
    split, raw = servers
    ids = model[1]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    closed_once = False
    for seed in SEEDS[:4]:
        a = post(split, body(ids, seed, tools=[tool], tool_choice="auto"))
        b = post(raw, body(ids, seed, tools=[tool], tool_choice="auto"))
        thought, closed, answer = b["choices"][0]["message"]["content"].partition("</think>")
        message = a["choices"][0]["message"]
        # The lazy tool grammar waits for a call after the thought; the split is the raw answer's, tools or not.
        assert message.get("reasoning_content", "") == thought.strip()
        assert message["content"] == (answer.lstrip() if closed else "")
        assert a["usage"] == b["usage"]
        closed_once = closed_once or bool(closed and thought.strip())
    assert closed_once


def test_each_of_n_choices_is_split_on_its_own(servers, model):
    split, raw = servers
    ids = model[1]
    a = post(split, body(ids, 5, n=2))
    b = post(raw, body(ids, 5, n=2))
    for ca, cb in zip(a["choices"], b["choices"], strict=True):
        thought, closed, answer = cb["message"]["content"].partition("</think>")
        assert ca["message"].get("reasoning_content", "") == thought.strip()
        assert ca["message"]["content"] == (answer.lstrip() if closed else "")
    assert a["usage"] == b["usage"] and a["usage"]["completion_tokens"] == 2 * MAX_TOKENS
