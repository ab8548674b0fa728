"""Fuzzing POST /v1/responses from its served OpenAPI schema, against the ASGI app with the fake engine (the same
harness as tests/test_fuzz.py): no 500, no leak, every error in OpenAI's format, every answer a ``response``
object matching the document, every stream a sequence of numbered events ending in one terminal event."""

from __future__ import annotations

import json

import jsonschema
from hypothesis import given

from .test_fuzz import FUZZ, SCHEMAS, check, client, with_model  # noqa: F401 - client is a fixture

PATH = "/v1/responses"
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


@FUZZ
@given(body=with_model(SCHEMAS["ResponseRequest"]))
def test_responses_from_schema(client, body):  # noqa: F811
    c, _ = client
    r = c.post(PATH, json=body)
    check(r, PATH)
    if r.status_code != 200:
        return
    if not r.headers["content-type"].startswith("text/event-stream"):
        jsonschema.validate(r.json(), SCHEMAS["Response"])
        return
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] in TERMINAL
    assert not any(e["type"] in TERMINAL for e in events[:-1])
    jsonschema.validate(events[-1]["response"], SCHEMAS["Response"])
