"""Messages requests generated from the OpenAPI document's own schema (valid and mutated), against the app over a
fake model: every answer is a message or an Anthropic-format error, never a 500 or a leak."""

from __future__ import annotations

import jsonschema
from hypothesis import given

from .test_fuzz import FUZZ, LEAKS, SCHEMAS, client, with_model  # noqa: F401 (client: a fixture)


@FUZZ
@given(body=with_model(SCHEMAS["MessagesRequest"]))
def test_messages_from_schema(client, body):  # noqa: F811
    c, _ = client
    r = c.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code < 500 or r.status_code in (503, 529), (r.status_code, r.text[:300])
    assert r.headers.get("x-request-id", "").startswith("req_")
    assert not LEAKS.search(r.text), r.text[:300]
    if r.status_code >= 400:
        jsonschema.validate(r.json(), SCHEMAS["AnthropicError"])
    elif body.get("stream") is not True:
        jsonschema.validate(r.json(), SCHEMAS["Message"])
    else:
        assert r.text.startswith("event: message_start\n")


@FUZZ
@given(body=with_model(SCHEMAS["MessagesRequest"]))
def test_count_tokens_from_schema(client, body):  # noqa: F811
    c, _ = client
    r = c.post("/v1/messages/count_tokens", json=body)
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    schema = SCHEMAS["AnthropicError"] if r.status_code >= 400 else SCHEMAS["MessageTokensCount"]
    jsonschema.validate(r.json(), schema)
