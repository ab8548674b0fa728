"""The Responses API end to end: the official openai SDK (create, stream, parse, a function-tool round trip, stored
responses with previous_response_id, retrieve and delete, another key's id), the OpenAI Agents SDK's default
(Responses) model, out of credit, the request Codex CLI really sends, and hostile bodies on a raw socket, against
a real server and the tiny model. Usage and price are the ledger's own."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import openai
import pydantic
import pytest

from reverb.money import MICRO

from .conftest import KEY, SESSION_OWNED, Server, prompt_tokens
from .upstreams import wait_row

pytestmark = pytest.mark.model

MODEL = "smollm2-135m"
DATA = Path(__file__).resolve().parent / "data"
WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}
YES_NO = {"format": {"type": "json_schema", "name": "yes_no", "strict": True, "schema": {
    "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}}}


class YesNo(pydantic.BaseModel):
    ok: bool


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """The tiny model with three keys: the dev key, alice and bob (credit), and poor (one micro-unit)."""
    s = Server(tmp_path_factory.mktemp("responses"), "--parallel", "2")
    with s.ledger() as ledger:
        s.alice = ledger.create_key("alice", 10 * MICRO)
        s.bob = ledger.create_key("bob", 10 * MICRO)
        s.poor = ledger.create_key("poor", 1)
    s.start()
    SESSION_OWNED.add(s.proc.pid)
    yield s
    s.stop()
    with s.ledger() as ledger:
        inv = ledger.invariant()
    assert inv["ok"], inv


def client(srv, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0)


def test_create_is_billed_and_counted_like_chat(srv, engine):
    raw = client(srv, srv.alice).responses.with_raw_response.create(
        model=MODEL, instructions="You are terse.", input="Name a color.", max_output_tokens=6, temperature=0)
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]
    assert r.usage.input_tokens == prompt_tokens(engine, messages)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    row = wait_row(srv, raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["status"] == "completed"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (r.usage.input_tokens, r.usage.output_tokens)
    assert int(raw.headers["x-reverb-price"]) == row["price"] > 0
    # the same request as chat asks the model the same thing
    chat = client(srv).chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert chat.choices[0].message.content == r.output_text
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")


def test_stream_events_are_the_sequence_the_sdk_checks(srv):
    c = client(srv)
    with c.responses.stream(model=MODEL, input="Is the sky blue?", text=YES_NO, max_output_tokens=30,
                            temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert json.loads(text) in ({"ok": True}, {"ok": False}) and final.output_text == text
    assert final.status == "completed" and final.usage.output_tokens > 0
    whole = c.responses.create(model=MODEL, input="Is the sky blue?", text=YES_NO, max_output_tokens=30,
                               temperature=0)
    assert whole.output_text == text and whole.usage.output_tokens == final.usage.output_tokens


def test_a_cut_stream_ends_incomplete_as_openai_does(srv):
    with client(srv).responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3,
                                      temperature=0, stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.usage.output_tokens == 3


def test_parse_fills_a_pydantic_model(srv):
    r = client(srv).responses.parse(model=MODEL, input="Is water wet?", text_format=YesNo, max_output_tokens=30,
                                    temperature=0)
    assert isinstance(r.output_parsed, YesNo)


def test_function_tool_round_trip_with_stored_responses(srv):
    c = client(srv, srv.alice)
    first = c.responses.create(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                               tool_choice="required", max_output_tokens=40, temperature=0)
    calls = [o for o in first.output if o.type == "function_call"]
    assert first.status == "completed" and len(calls) >= 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str) and calls[0].call_id
    second = c.responses.create(model=MODEL, previous_response_id=first.id, tools=[WEATHER],
                                input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                        "output": "sunny, 21 C"}], max_output_tokens=6, temperature=0)
    assert second.output_text and second.previous_response_id == first.id
    # the stored conversation came first: its input, its call and the call's output were all read
    assert second.usage.input_tokens > first.usage.input_tokens + 5
    # the same conversation sent whole (store: false) is the same prompt and the same answer
    whole = c.responses.create(model=MODEL, store=False, tools=[WEATHER], max_output_tokens=6, temperature=0,
                               input=[{"role": "user", "content": "What is the weather in Paris?"},
                                      {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                                       "arguments": calls[0].arguments},
                                      {"type": "function_call_output", "call_id": calls[0].call_id,
                                       "output": "sunny, 21 C"}])
    assert (whole.output_text, whole.usage.input_tokens) == (second.output_text, second.usage.input_tokens)
    assert whole.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(whole.id)


def test_streamed_function_call_arguments(srv):
    with client(srv).responses.stream(model=MODEL, input="Weather in Rome?", tools=[WEATHER],
                                      tool_choice="required", max_output_tokens=40, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
    assert json.loads(done.arguments) == json.loads(final.output[0].arguments)
    assert kinds.index("response.function_call_arguments.done") < kinds.index("response.completed")


def test_what_a_client_may_act_on_comes_after_the_ledger_row(srv):
    """A function call's done event and the completion are sent only once the request is recorded and stored:
    at the moment the client reads them, the row and the stored response exist (no waiting)."""
    body = {"model": MODEL, "input": "Weather in Oslo?", "tools": [WEATHER], "tool_choice": "required",
            "max_output_tokens": 40, "temperature": 0, "stream": True}
    seen = []
    with srv.client() as http, srv.ledger() as ledger:
        with http.stream("POST", "/v1/responses", json=body) as r:
            request_id = r.headers["x-request-id"]
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                kind = json.loads(line[6:])["type"]
                if kind in ("response.function_call_arguments.done", "response.completed", "response.incomplete"):
                    row = ledger.request(request_id)
                    stored = ledger.engine.read("SELECT id FROM responses WHERE id = ?",
                                                ("resp_" + request_id.removeprefix("req_"),))
                    seen.append((kind, row is not None and row["status"] == "completed", bool(stored)))
    assert seen[0] == ("response.function_call_arguments.done", True, True)
    assert seen[-1][0] in ("response.completed", "response.incomplete") and all(s[1:] == (True, True) for s in seen)


def test_stored_responses_are_their_keys_only(srv):
    alice, bob = client(srv, srv.alice), client(srv, srv.bob)
    r = alice.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, temperature=0)
    got = alice.responses.retrieve(r.id)
    assert (got.id, got.output_text, got.usage.output_tokens) == (r.id, r.output_text, r.usage.output_tokens)
    for call in (lambda: bob.responses.retrieve(r.id), lambda: bob.responses.delete(r.id),
                 lambda: bob.responses.create(model=MODEL, input="go on", previous_response_id=r.id,
                                              max_output_tokens=2),
                 lambda: client(srv).responses.retrieve(r.id)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert r.output_text not in e.value.response.text
    alice.responses.retrieve(r.id)             # still there after bob's attempts
    alice.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        alice.responses.create(model=MODEL, input="go on", previous_response_id=r.id, max_output_tokens=2)
    assert e.value.body["param"] == "previous_response_id"


def test_out_of_credit_is_429_insufficient_quota_streamed_or_not(srv):
    poor = client(srv, srv.poor)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as e:
            r = poor.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, stream=stream)
            list(r) if stream else None
        assert e.value.body["code"] == "insufficient_quota" and e.value.response.headers["x-should-retry"] == "false"


def test_hosted_tools_are_left_out_and_said_so(srv):
    with srv.client() as http:
        r = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 2,
                                             "tools": [{"type": "web_search"}, WEATHER, {"type": "file_search"}]})
    assert r.status_code == 200 and r.headers["x-reverb-omitted-tools"] == "web_search,file_search"
    body = r.json()
    assert body["reverb_omitted_tools"] == ["web_search", "file_search"] and body["tools"] == [WEATHER]


def test_codex_request_is_answered_with_a_stream_or_a_context_error(srv):
    body = json.loads((DATA / "codex_request.json").read_text())
    with srv.client() as http:
        with http.stream("POST", "/v1/responses", json=body) as r:
            data = b"".join(r.iter_raw())
    if r.status_code == 400:
        error = json.loads(data)["error"]
        assert (error["code"], error["param"], error["type"]) == \
            ("context_length_exceeded", "input", "invalid_request_error")
        assert "maximum context length is 2048 tokens" in error["message"]
    else:
        assert r.status_code == 200 and r.headers["x-reverb-omitted-tools"]
        events = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
        assert events[0]["type"] == "response.created" and events[-1]["type"] in ("response.completed",
                                                                                   "response.incomplete")


def test_the_agents_sdk_default_model_runs_a_tool_and_answers(srv):
    agents = pytest.importorskip("agents")
    calls = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    agents.set_tracing_disabled(True)
    # the SDK's default: a model name resolved by its default provider, on the Responses API, with this client
    agents.set_default_openai_client(openai.AsyncOpenAI(base_url=srv.base_url + "/v1", api_key=srv.alice,
                                                        max_retries=0), use_for_tracing=False)
    agent = agents.Agent(name="weather", instructions="You are terse.", tools=[get_weather], model=MODEL,
                         model_settings=agents.ModelSettings(max_tokens=40, temperature=0, tool_choice="required"))
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=3)
    assert calls and isinstance(result.final_output, str) and result.final_output
    assert len(result.raw_responses) == 2        # the call, then the answer after its output
    assert all(r.response_id.startswith("resp_") for r in result.raw_responses)
    answer = agents.Agent(name="judge", instructions="Answer as JSON.", output_type=YesNo, model=MODEL,
                          model_settings=agents.ModelSettings(max_tokens=30, temperature=0))
    assert isinstance(agents.Runner.run_sync(answer, "Is the sky blue?").final_output, YesNo)


def _raw(srv, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
    host, port = srv.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as s:
        s.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Type: " + ctype.encode() + b"\r\nConnection: close\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"chunked" in head.lower():
        rest = httpx.Response(200, content=rest, headers={"transfer-encoding": "chunked"}).content
    return status, json.loads(rest)


@pytest.mark.parametrize("body, param", [
    (b'{"model": "smollm2-135m", "input": "\xff\xfe not utf-8"}', None),
    (b'{"model": "smollm2-135m", "input": {"role": "user"}}', "input"),
    (b'{"model": "smollm2-135m", "input": [{"type": "computer_call_output", "call_id": "x"}]}', "input[0].type"),
    (b'{"model": "smollm2-135m", "input": "\\ud800"}', "input"),
    (json.dumps({"model": MODEL, "input": [{"role": "user", "content": "x"}] * 5000}).encode(), "input"),
    (json.dumps({"model": MODEL, "input": "hi", "frobnicate": True}).encode(), "frobnicate"),
    (json.dumps({"model": MODEL, "input": "hi", "previous_response_id": "resp_" + "x" * 200}).encode(),
     "previous_response_id"),
])
def test_hostile_bodies_are_clear_400s(srv, body, param):
    status, answer = _raw(srv, body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param


def test_unknown_model_and_stored_ids(srv):
    with srv.client() as http:
        assert http.post("/v1/responses", json={"model": "nope", "input": "hi"}).json()["error"]["code"] == \
            "model_not_found"
        assert http.get("/v1/responses/resp_missing").status_code == 404
        assert http.get("/v1/responses/" + "x" * 500).status_code == 404
        assert http.delete("/api/v1/responses/resp_missing").status_code == 404
        assert http.put("/v1/responses/resp_missing").status_code == 405
