"""The rest of the OpenAI surface end to end: logprobs, n, /v1/completions, /v1/embeddings, /v1/models/{id}, and
the rule that every Chat Completions field is honoured or refused with 400 naming it. All billed and logged."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from .conftest import KEY, chat, prompt_tokens

MODEL = "smollm2-135m"


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)


def ledger_row(server, request_id: str) -> dict:
    with server.ledger() as ledger:
        return ledger.request(request_id)


# -- logprobs ----------------------------------------------------------------------------------------------------

def test_logprobs_agree_with_greedy_decoding(server):
    r = client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}],
                                               max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].token == entry.token            # greedy took the most likely token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-6)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1.0 + 1e-6
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8") == r.choices[0].message.content


def test_logprobs_streamed_match_the_blocking_answer(server):
    c = client(server)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Count to three."}], max_tokens=6, temperature=0,
              logprobs=True, top_logprobs=2)
    streamed = [e for ch in c.chat.completions.create(stream=True, **kw) if ch.choices and ch.choices[0].logprobs
                for e in ch.choices[0].logprobs.content]
    whole = c.chat.completions.create(**kw).choices[0].logprobs.content
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in whole]


def test_no_logprobs_unless_asked_and_top_needs_logprobs(server):
    r = client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=3, temperature=0)
    assert r.choices[0].logprobs is None
    with server.client() as http:
        for extra, param in [({"top_logprobs": 3}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21},
                                                                      "top_logprobs"),
                             ({"logprobs": "yes"}, "logprobs")]:
            bad = http.post("/v1/chat/completions", json=chat("x", **extra))
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param


# -- n -----------------------------------------------------------------------------------------------------------

def test_n_choices_share_the_prompt_and_are_each_billed(server, engine):
    messages = [{"role": "user", "content": "Invent a name for a boat."}]
    c = client(server)
    one = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                      n=2)
    two = raw.parse()
    assert [ch.index for ch in two.choices] == [0, 1]
    # greedy: both choices, decoded from the copied KV of one prefill, equal the single answer
    assert [ch.message.content for ch in two.choices] == [one.choices[0].message.content] * 2
    assert two.usage.prompt_tokens == prompt_tokens(engine, messages)              # the prompt counted once
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens          # every choice billed
    row = ledger_row(server, raw.headers["x-request-id"])
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == \
        ("completed", two.usage.prompt_tokens, two.usage.completion_tokens)


def test_n_seeded_choices_differ_and_repeat(server):
    c = client(server)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Invent a name for a cat."}], max_tokens=8,
              temperature=1.0, seed=42, n=3)
    a = [ch.message.content for ch in c.chat.completions.create(**kw).choices]
    b = [ch.message.content for ch in c.chat.completions.create(**kw).choices]
    assert a == b and len(set(a)) > 1


def test_n_streamed_interleaves_choices_by_index(server):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Say a word."}], max_tokens=6, temperature=0)
    one = client(server).chat.completions.create(**kw)
    chunks = list(client(server).chat.completions.create(n=2, stream=True, stream_options={"include_usage": True},
                                                         **kw))
    texts = {0: "", 1: ""}
    finishes = {}
    for ch in chunks:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts[0] == texts[1] == one.choices[0].message.content and sorted(finishes) == [0, 1]
    assert chunks[-1].usage.completion_tokens == 2 * one.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == one.usage.prompt_tokens


def test_n_beyond_the_slots_is_refused(server):
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=chat("x", n=5))      # the shared server has 4 slots
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        r = http.post("/v1/chat/completions", json=chat("x", n=0))
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"


# -- /v1/completions ---------------------------------------------------------------------------------------------

def test_completions_with_a_string_and_a_list(server, engine):
    c = client(server)
    r = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(engine.tokenize("The capital of France is", special=False)) + engine.add_bos()
    many = c.completions.create(model=MODEL, prompt=["Once upon a time", "The capital of France is"], max_tokens=6,
                                temperature=0, n=2)
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    assert many.choices[2].text == many.choices[3].text == r.choices[0].text  # prompt 1's choices, greedy
    # each prompt billed once, every choice's tokens billed
    assert many.usage.prompt_tokens == r.usage.prompt_tokens + len(engine.tokenize("Once upon a time",
                                                                                  special=False)) + engine.add_bos()
    assert many.usage.completion_tokens >= 2 * r.usage.completion_tokens + 2


def test_completions_stream_and_logprobs(server):
    c = client(server)
    kw = dict(model=MODEL, prompt="One, two, three,", max_tokens=8, temperature=0)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **kw) if ch.choices)
    whole = c.completions.create(logprobs=3, **kw).choices[0]
    assert streamed == whole.text
    lp = whole.logprobs
    assert "".join(lp.tokens) == whole.text and len(lp.token_logprobs) == len(lp.tokens)
    for token, best in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert len(best) == 3 and max(best, key=best.get) == token   # greedy took the most likely token
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_completions_refusals(server):
    with server.client() as http:
        for extra, param in [({"echo": True}, "echo"), ({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"),
                             ({"prompt": [1, 2, 3]}, "prompt[0]"), ({"prompt": ""}, "prompt"),
                             ({"logprobs": 6}, "logprobs"), ({"prompt": None}, "prompt")]:
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)
        ok = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "echo": False, "max_tokens": 2,
                                                "best_of": 1, "suffix": None})
    assert ok.status_code == 200
    row = ledger_row(server, ok.headers["x-request-id"])
    assert row["endpoint"] == "completions" and row["status"] == "completed" and row["completion_tokens"] > 0


# -- /v1/embeddings ----------------------------------------------------------------------------------------------

def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_are_deterministic_and_meaningful(server):
    c = client(server)
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.", "Quarterly revenue rose by four percent."]
    r = c.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    a, near, far = (d.embedding for d in r.data)
    assert [d.index for d in r.data] == [0, 1, 2] and len(a) == len(near) == len(far) > 0
    assert math.isclose(math.sqrt(sum(x * x for x in a)), 1.0, rel_tol=1e-5)        # unit length
    assert cosine(a, near) > cosine(a, far)
    again = c.embeddings.create(model=MODEL, input=texts[0], encoding_format="float").data[0].embedding
    assert again == a                                                              # same input, same vector
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0


def test_embeddings_base64_is_the_same_vector(server):
    with server.client() as http:
        f = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello", "encoding_format": "float"}).json()
        b = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello", "encoding_format": "base64"})
    raw = base64.b64decode(b.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(decoded, f["data"][0]["embedding"],
                                                                             strict=True))
    # the official client asks for base64 by default and decodes it
    sdk = client(server).embeddings.create(model=MODEL, input="hello").data[0].embedding
    assert all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(sdk, decoded, strict=True))
    rid = b.headers["x-request-id"]
    row = ledger_row(server, rid)
    assert row["endpoint"] == "embeddings" and row["status"] == "completed" and row["prompt_tokens"] > 0
    assert row["price"] == int(b.headers["x-reverb-price"])
    line = next(ln for ln in server.log().splitlines() if rid in ln)   # the access log, like a chat request's
    assert " embeddings 200 " in line and f" {row['prompt_tokens']}+0 tok" in line


def test_embeddings_refusals(server):
    with server.client() as http:
        for body, param in [({"input": ""}, "input"), ({"input": ["a", 3]}, "input[1]"), ({"input": []}, "input"),
                            ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
                            ({"input": "a", "dimensions": 64}, "dimensions"), ({"input": "word " * 3000}, "input")]:
            r = http.post("/v1/embeddings", json={"model": MODEL, **body})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
        missing = http.post("/v1/embeddings", json={"model": "nope", "input": "a"})
    assert missing.status_code == 404
    row = ledger_row(server, missing.headers["x-request-id"])
    assert row["endpoint"] == "embeddings" and row["status"] == "rejected"


# -- /v1/models/{id} ---------------------------------------------------------------------------------------------

def test_retrieve_a_model(server):
    m = client(server).models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client(server).models.retrieve("reverb-7b")      # in the catalogue, not loaded: no fallback
    with server.client() as http:
        r = http.get("/api/v1/models/" + MODEL)
        gone = http.get("/v1/models/no-such-model")
    assert r.json()["id"] == MODEL
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert ledger_row(server, gone.headers["x-request-id"])["endpoint"] == "models"


# -- nothing silently ignored ------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("prediction", {"type": "text", "content": "x"}), ("web_search_options", {}),
    ("functions", [{"name": "f"}]), ("function_call", "auto"), ("reasoning_effort", "extreme"),
    ("verbosity", "high"), ("service_tier", "flex"), ("store", True),
    ("user", 5), ("metadata", {"k": 1}), ("n", "2"),
])
def test_openai_fields_we_cannot_honour_are_refused_by_name(server, field, value):
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=chat("x", max_tokens=2, **{field: value}))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    assert ledger_row(server, r.headers["x-request-id"])["status"] == "rejected"


def test_fields_that_ask_for_nothing_and_foreign_fields_are_accepted(server):
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=chat(
            "x", max_tokens=2, store=False, modalities=["text"], service_tier="auto", user="u-1",
            metadata={"team": "a"}, safety_identifier="s", prompt_cache_key="k", verbosity="medium",
            top_k=20, min_p=0.05, repeat_penalty=1.1, stream_options=None, parallel_tool_calls=True,
            reasoning_effort="high"))
    assert r.status_code == 200, r.text


def test_gateway_options_are_honoured_or_refused(server):
    messages = [{"role": "user", "content": "Name a fruit."}]
    with server.client() as http:
        r = http.post("/api/endpoint", json={"model": MODEL, "messages": messages, "options": {
            "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2}})
        assert r.status_code == 200, r.text
        lps = r.json()["result"]["logprobs"]
        assert len(lps) == r.json()["result"]["tokens_output"] and all(len(e["top_logprobs"]) == 2 for e in lps)
        for options, param in [({"max_token": 5}, "options.max_token"), ({"n": 2}, "options.n"),
                               ({"audio": {}}, "options.audio"), ({"stream": True, "logprobs": True},
                                                                  "options.stream")]:
            bad = http.post("/api/endpoint", json={"model": MODEL, "messages": messages, "options": options})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, (options, bad.text)
