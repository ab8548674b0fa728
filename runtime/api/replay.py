"""Cassettes for the test-only middleware (api/faults.py): match a request against recorded interactions, replay
a recorded answer with its chunking, and capture answers while recording.

A request matches an interaction when method, path and the *normalised* JSON body are equal: object keys sorted;
in every string, whitespace runs collapsed and trimmed, timestamps, UUIDs and OpenAI-style ids (``call_...``,
``chatcmpl-...``) replaced by placeholders; the values of ``id``, ``tool_call_id``, ``created``, ``user`` and
``metadata`` ignored. Interactions are taken in recorded order; once all matching ones are used, the last is
replayed again (a test that asks the same thing twice).
"""

from __future__ import annotations

import base64
import json
import re

VOLATILE_KEYS = {"id", "tool_call_id", "created", "user", "metadata", "system_fingerprint"}
KEPT_HEADERS = (b"content-type", b"retry-after", b"x-should-retry")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_ID = re.compile(r"\b(call|chatcmpl|cmpl|req|toolu|resp|msg|run)[-_][A-Za-z0-9]{6,}\b")
_SPACE = re.compile(r"\s+")
MAX_INTERACTIONS = 1000


def normalise(value):
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE_KEYS else normalise(v)) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        text = _TIME.sub("<time>", _UUID.sub("<uuid>", _ID.sub(r"\1_<id>", value)))
        return _SPACE.sub(" ", text).strip()
    return value


def request_key(method: str, path: str, body) -> str:
    return json.dumps([method, path, normalise(body)], sort_keys=True, ensure_ascii=False)


class Cassette:
    """One test's recorded interactions, as the plugin sent them; ``model``: the local model a miss is sent to."""

    def __init__(self, interactions: list[dict], model: str):
        if not isinstance(interactions, list) or len(interactions) > MAX_INTERACTIONS:
            raise ValueError(f"interactions must be a list of at most {MAX_INTERACTIONS}")
        self.model = model
        self.entries = []
        for i in interactions:
            req, resp = i["request"], i["response"]
            chunks = [c.encode() if isinstance(c, str) else base64.b64decode(c["base64"]) for c in resp["chunks"]]
            headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in resp.get("headers", {}).items()
                       if k.encode("latin-1").lower() in KEPT_HEADERS]
            self.entries.append([request_key(str(req["method"]), str(req["path"]), req.get("body")),
                                 int(resp["status"]), headers, chunks, False])
        self.hits = 0

    def match(self, method: str, path: str, body):
        key = request_key(method, path, body)
        found = [e for e in self.entries if e[0] == key]
        if not found:
            return None
        entry = next((e for e in found if not e[4]), found[-1])
        entry[4] = True
        return entry

    @staticmethod
    async def replay(entry, send) -> None:
        _, status, headers, chunks, _ = entry
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def capturing(send, entry: dict):
    """``send`` that also keeps the response (status, kept headers, each body chunk) in the journal entry."""
    response = entry["response"] = {"status": None, "headers": {}, "chunks": []}

    async def capture(message):
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
            response["headers"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])
                                   if k.lower() in KEPT_HEADERS}
        elif message["type"] == "http.response.body" and message.get("body"):
            data = message["body"]
            try:
                response["chunks"].append(data.decode("utf-8"))
            except UnicodeDecodeError:
                response["chunks"].append({"base64": base64.b64encode(data).decode()})
        await send(message)
    return capture


def with_model(body, model: str):
    """The request body for the local model after a miss (a recorded provider's model name is not served here)."""
    if isinstance(body, dict) and "model" in body:
        return json.dumps({**body, "model": model}).encode()
    return None
