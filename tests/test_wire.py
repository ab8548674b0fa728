"""The request-field table (api/wire.py): one parse per dialect, the relay view, and the documents generated from
it (the OpenAPI request schemas, the field table in docs/api-fields.md). Fast: no model, no server."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from reverb.api import wire
from reverb.api.checks import Stop
from reverb.cli import docs
from reverb.api.openapi import schemas
from reverb.errors import InvalidRequest
from reverb.settings import Settings
from reverb.types import ResponseFormat

CFG = Settings.build(environ={}, max_tokens_cap=64)
ROOT = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "hi"}]


def refused(body: dict, dialect: str) -> str:
    with pytest.raises(InvalidRequest) as e:
        wire.parse(body, dialect, CFG)
    return e.value.param


def test_one_row_per_name_per_dialect():
    for d in wire.DIALECTS:
        names = [f.name for f in wire.rows(d)]
        assert len(names) == len(set(names)), d


def test_every_row_refusal_and_allowed_value_agree():
    for row in wire.FIELDS:
        for d in row.dialects:
            accepted = row.accepted(d)
            if accepted is not None:
                assert row.refused and "{p}" in row.refused, row.name


def test_chat_parse_fills_the_ask_from_the_rows():
    ask, render = wire.parse({"model": "m", "messages": HI, "max_tokens": 9, "max_completion_tokens": 7, "n": 2,
                              "temperature": 0, "logprobs": True, "top_logprobs": 3, "stop": "x", "stream": True,
                              "stream_options": {"include_usage": True}, "store": False, "top_k": 5}, wire.CHAT, CFG)
    s = ask.sampling
    assert (s.max_tokens, s.n, s.temperature, s.logprobs, s.top_logprobs, s.stop, s.top_k) == (
        7, 2, 0.0, True, 3, ("x",), 5)       # max_completion_tokens wins over max_tokens
    assert ask.stream and render.include_usage and ask.messages[0].content == "hi"


def test_refusals_name_the_field_on_the_dialects_own_path():
    assert refused({"model": "m", "messages": HI, "store": True}, wire.CHAT) == "store"
    assert refused({"model": "m", "messages": HI, "top_logprobs": 2}, wire.CHAT) == "top_logprobs"
    assert refused({"model": "m", "messages": HI, "n": 129}, wire.CHAT) == "n"
    assert refused({"model": "m", "messages": HI, "tool_choice": "required"}, wire.CHAT) == "tool_choice"
    assert refused({"model": "m", "messages": HI, "options": {"parallel_tool_calls": 1}},
                   wire.GATEWAY) == "options.parallel_tool_calls"
    assert refused({"model": "m", "messages": HI, "options": {"n": 2}}, wire.GATEWAY) == "options.n"
    assert refused({"model": "m", "messages": HI, "options": {"top_p": 2}}, wire.GATEWAY) == "options.top_p"
    assert refused({"model": "m", "messages": HI, "options": {"max_token": 2}}, wire.GATEWAY) == "options.max_token"
    assert refused({"model": "m", "messages": HI, "options": {"stream": True, "logprobs": True}},
                   wire.GATEWAY) == "options.stream"
    assert refused({"model": "m", "prompt": "x", "best_of": 2}, wire.COMPLETIONS) == "best_of"
    assert refused({"model": "m", "input": [""]}, wire.EMBEDDINGS) == "input[0]"
    assert refused({"model": "m", "input": "x", "dimensions": 8}, wire.EMBEDDINGS) == "dimensions"
    assert wire.wire_param("response_format.json_schema.schema", wire.GATEWAY) == \
        "options.response_format.json_schema.schema"
    assert wire.wire_param("messages[0].content", wire.GATEWAY) == "messages[0].content"


@pytest.mark.parametrize("rf,param", [
    ({"type": "xml"}, "response_format.type"),
    ("json", "response_format"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "n", "strict": "yes", "schema": {}}},
     "response_format.json_schema.strict"),
    ({"type": "json_schema", "json_schema": {"name": "n", "schema": "x"}}, "response_format.json_schema.schema"),
])
def test_response_format_shape_is_checked_at_the_edge(rf, param):
    assert refused({"model": "m", "messages": HI, "response_format": rf}, wire.CHAT) == param
    assert refused({"model": "m", "messages": HI, "options": {"response_format": rf}}, wire.GATEWAY) == \
        "options." + param


def test_response_format_becomes_a_typed_value():
    def rf(value):
        return wire.parse({"model": "m", "messages": HI, "response_format": value}, wire.CHAT, CFG)[0].response_format
    assert rf(None) is None and rf({"type": "text"}) is None
    assert rf({"type": "json_object"}) == ResponseFormat("json_object")
    assert rf({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "string"}, "strict": True}}) \
        == ResponseFormat("json_schema", {"type": "string"}, "n", True)


def test_dialect_defaults():
    ask, render = wire.parse({"model": "m", "prompt": ["a", "b"], "logprobs": 2}, wire.COMPLETIONS, CFG)
    assert ask.sampling.max_tokens == 16 and ask.sampling.logprobs and ask.sampling.top_logprobs == 2
    assert ask.choices == 2 and not render.include_usage
    ask, render = wire.parse({"model": "m", "messages": HI}, wire.GATEWAY, CFG)
    assert render.stats and ask.sampling.n == 1
    _, render = wire.parse({"model": "m", "input": "x", "encoding_format": "base64"}, wire.EMBEDDINGS, CFG)
    assert render.encoding_format == "base64"


def test_the_relay_view_checks_only_what_reverb_needs():
    body = {"model": "m", "messages": [{"role": "critic", "content": [{"type": "image"}]}], "audio": {},
            "max_tokens": 5, "stream_options": {"include_usage": True}}
    reading = wire.read(body, wire.CHAT, CFG)
    with pytest.raises(InvalidRequest):
        reading.for_local()
    ask, render = reading.for_upstream()
    assert not ask.local and ask.sampling.max_tokens == 5 and render.include_usage
    assert ask.extra["audio"] == {} and "model" not in ask.extra
    with pytest.raises(InvalidRequest) as e:
        wire.read({**body, "max_tokens": 0}, wire.CHAT, CFG).for_upstream()
    assert e.value.param == "max_tokens"
    plain = wire.read({"model": "m", "messages": HI, "temperature": 0.5}, wire.CHAT, CFG).for_upstream()[0]
    assert plain.local and plain.sampling.temperature == 0.5     # a local fallback may stand in
    assert not wire.read({"model": "m", "messages": HI, "n": 2}, wire.CHAT, CFG).for_upstream()[0].local


@pytest.mark.parametrize("dialect,name", [(wire.CHAT, "ChatRequest"), (wire.COMPLETIONS, "CompletionRequest"),
                                          (wire.EMBEDDINGS, "EmbeddingRequest"), (wire.GATEWAY, "GatewayRequest")])
def test_openapi_request_schemas_are_the_rows(dialect, name):
    schema = schemas(CFG)[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    props = schema["properties"]
    if dialect == wire.GATEWAY:
        options = props.pop("options")["properties"]
        props = {**props, **options}
    listed = {f.name for f in wire.rows(dialect) if f.accepted(dialect) != wire.NOTHING}
    assert set(props) == listed


def test_the_docs_tables_are_generated_and_their_links_resolve():
    assert docs.problems(ROOT) == [], "run: python -m reverb.cli.docs --write"


def test_a_stale_table_or_a_broken_link_is_named(tmp_path):
    (tmp_path / "docs").mkdir()
    for path, _ in docs.TABLES.values():
        (tmp_path / path).write_text((ROOT / path).read_text().replace("| `n` |", "| `N` |"))
    (tmp_path / "README.md").write_text("[ok](docs/api-fields.md) [gone](docs/nothing.md) [web](https://x.y)")
    found = docs.problems(tmp_path)
    assert any("field table differs" in p for p in found) and any("docs/nothing.md" in p for p in found)
    assert not any("https" in p for p in found)


def test_a_dialect_may_spell_a_field_its_own_way():
    row = wire.Field("stop", Stop(), "sampling.stop", frozenset({wire.CHAT, wire.GATEWAY}), "",
                     names={wire.GATEWAY: "stop_sequences"})
    assert row.key(wire.CHAT) == "stop" and wire.wire_name(row, wire.GATEWAY) == "options.stop_sequences"
