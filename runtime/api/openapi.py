"""The OpenAPI 3.1 document for both dialects, served at ``/openapi.json`` (behind the key like the rest).

The request schemas are generated from the field table (``wire.py``): each row's check emits the JSON Schema of
what it accepts, so the document cannot drift from what is enforced; the answers' schemas are written as data.
The fuzz test (tests/test_fuzz.py) generates requests from these very schemas and checks every answer against the
error schemas below.
"""

from __future__ import annotations

from ..settings import Settings
from . import wire

NUM = {"type": "number"}


def request_schema(dialect: str, settings: Settings) -> dict:
    """The JSON Schema of the dialect's request body, from its rows (a row no value is accepted for is left out)."""
    top: dict = {}
    options: dict = {}
    required = []
    for row in wire.rows(dialect):
        accepted = row.accepted(dialect)
        if accepted == wire.NOTHING:
            continue
        if accepted is not None:
            schema = {"const": accepted[0]} if len(accepted) == 1 else {"enum": list(accepted)}
        else:
            schema = row.check.schema(settings)
        into = top if row.top or dialect != wire.GATEWAY else options
        parent, _, child = row.key(dialect).rpartition(".")
        if parent:   # a member of an object (Responses' text.format)
            into = into.setdefault(parent, {"type": "object"}).setdefault("properties", {})
        into[child] = schema
        if row.check.required:
            required.append(row.key(dialect))
    if dialect == wire.GATEWAY:
        top["options"] = {"type": "object", "additionalProperties": False, "properties": options}
    out = {"type": "object", "required": required, "properties": top}
    if dialect in wire.STRICT:     # a field no row names is 400 there
        out["additionalProperties"] = False
    return out


def _usage(*keys: str) -> dict:
    return {"type": "object", "required": list(keys), "properties": {k: {"type": "integer"} for k in keys}}


def schemas(settings: Settings) -> dict:
    finish = {"enum": ["stop", "length", "tool_calls"]}
    tool_calls = {"type": "array", "items": {"type": "object", "required": ["id", "type", "function"]}}
    return {
        "ChatRequest": request_schema(wire.CHAT, settings),
        "ChatCompletion": {
            "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "finish_reason": finish,
                    "logprobs": {"type": ["object", "null"]},
                    "message": {"type": "object", "properties": {"role": {"const": "assistant"},
                                                                 "content": {"type": ["string", "null"]},
                                                                 "reasoning_content": {"type": "string"},
                                                                 "tool_calls": tool_calls}}}}},
                "usage": _usage("prompt_tokens", "completion_tokens", "total_tokens")},
        },
        "CompletionRequest": request_schema(wire.COMPLETIONS, settings),
        "Completion": {
            "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {"id": {"type": "string"}, "object": {"const": "text_completion"},
                           "created": {"type": "integer"}, "model": {"type": "string"},
                           "choices": {"type": "array", "items": {"type": "object", "required": ["text", "index"],
                                                                  "properties": {"text": {"type": "string"},
                                                                                 "index": {"type": "integer"},
                                                                                 "finish_reason": finish}}},
                           "usage": _usage("prompt_tokens", "completion_tokens", "total_tokens")},
        },
        "EmbeddingRequest": request_schema(wire.EMBEDDINGS, settings),
        "EmbeddingList": {
            "type": "object", "required": ["object", "data", "model", "usage"],
            "properties": {"object": {"const": "list"}, "model": {"type": "string"},
                           "data": {"type": "array", "items": {
                               "type": "object", "required": ["object", "index", "embedding"],
                               "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                                              "embedding": {"oneOf": [{"type": "array", "items": NUM},
                                                                      {"type": "string"}]}}}},
                           "usage": _usage("prompt_tokens", "total_tokens")},
        },
        "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"],
                  "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                                 "created": {"type": "integer"}, "owned_by": {"type": "string"}}},
        "OpenAIError": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"],
                                     "additionalProperties": False,
                                     "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                                    "param": {"type": ["string", "null"]},
                                                    "code": {"type": "string"}}}},
        },
        "ResponseRequest": request_schema(wire.RESPONSES, settings),
        "Response": {
            "type": "object", "required": ["id", "object", "created_at", "status", "model", "output", "usage"],
            "properties": {
                "id": {"type": "string"}, "object": {"const": "response"}, "created_at": {"type": "integer"},
                "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
                "model": {"type": "string"}, "previous_response_id": {"type": ["string", "null"]},
                "store": {"type": "boolean"},
                "output": {"type": "array", "items": {"type": "object", "required": ["type", "id"], "properties": {
                    "type": {"enum": ["message", "function_call", "reasoning"]}, "id": {"type": "string"},
                    "call_id": {"type": "string"}, "name": {"type": "string"}, "arguments": {"type": "string"},
                    "content": {"type": "array"}}}},
                "usage": {"oneOf": [_usage("input_tokens", "output_tokens", "total_tokens"), {"type": "null"}]},
                "reverb_omitted_tools": {"type": "array", "items": {"type": "string"},
                                         "description": "hosted tool types in the request that were not offered "
                                                        "to the model (also the x-reverb-omitted-tools header)"},
                "reverb_not_stored": {"type": "string",
                                      "description": "why a response asked to be stored was not (too large, or "
                                                     "the ledger failed); store is then false"}}},
        "ResponseDeleted": {"type": "object", "required": ["id", "object", "deleted"], "properties": {
            "id": {"type": "string"}, "object": {"const": "response.deleted"}, "deleted": {"const": True}}},
        **messages_schemas(settings),
        "GatewayRequest": request_schema(wire.GATEWAY, settings),
        "GatewaySuccess": {
            "type": "object", "required": ["status", "result"],
            "properties": {"status": {"const": 1}, "result": {
                "type": "object", "required": ["response", "model", "request"],
                "properties": {"response": {"type": "string"}, "tokens_input": {"type": "integer"},
                               "tokens_output": {"type": "integer"}, "price": NUM, "model": {"type": "string"},
                               "request": {"type": "array"}, "tool_calls": tool_calls,
                               "logprobs": {"type": "array"}}}},
        },
        "GatewayError": {
            "type": "object", "required": ["status", "error"], "additionalProperties": False,
            "properties": {"status": {"const": 0},
                           "error": {"type": "object", "required": ["code", "message"],
                                     "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                                    "param": {"type": "string"}}}},
        },
    }


def messages_schemas(settings: Settings) -> dict:
    """Anthropic's Messages API: the request (from the table), the message, the token count and the error."""
    block = {"type": "object", "required": ["type"], "properties": {
        "type": {"enum": ["text", "thinking", "tool_use"]}, "text": {"type": "string"},
        "thinking": {"type": "string"}, "id": {"type": "string"}, "name": {"type": "string"},
        "input": {"type": "object"}}}
    return {
        "MessagesRequest": request_schema(wire.MESSAGES, settings),
        "Message": {"type": "object", "required": ["id", "type", "role", "model", "content", "stop_reason",
                                                   "stop_sequence", "usage"],
                    "properties": {"id": {"type": "string"}, "type": {"const": "message"},
                                   "role": {"const": "assistant"}, "model": {"type": "string"},
                                   "content": {"type": "array", "items": block},
                                   "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]},
                                   "stop_sequence": {"type": ["string", "null"]},
                                   "usage": _usage("input_tokens", "output_tokens")}},
        "MessageTokensCount": _usage("input_tokens"),
        "AnthropicError": {
            "type": "object", "required": ["type", "error"],
            "properties": {"type": {"const": "error"}, "error": {
                "type": "object", "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}},
    }


def _messages_paths() -> dict:
    errors = _errors("AnthropicError", (400, 401, 403, 404, 413, 429, 529))
    body = {"required": True, "content": {"application/json": {"schema": _ref("MessagesRequest")}}}
    return {
        "/v1/messages": {"post": {
            "summary": "Anthropic's Messages API (stream: true for its named SSE events); x-api-key or Bearer",
            "requestBody": body, "responses": {"200": {"description": "message", "content": {
                "application/json": {"schema": _ref("Message")}, "text/event-stream": {}}}, **errors}}},
        "/v1/messages/count_tokens": {"post": {
            "summary": "the prompt's tokens with the model's template and tokenizer (free; logged)",
            "requestBody": body, "responses": {"200": {"description": "count", "content": {
                "application/json": {"schema": _ref("MessageTokensCount")}}}, **errors}}},
    }


def _account_paths() -> dict:
    """``/v1/me`` (any key), the admin routes and OpenAI-shaped organization usage (admin keys; docs/keys.md)."""
    def op(summary: str, codes: tuple[int, ...] = (400, 401, 403, 404), body: bool = False, query=()) -> dict:
        out = {"summary": summary, "responses": {"200": {"description": "json"}, **_errors("OpenAIError", codes)}}
        if body:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        if query:
            out["parameters"] = [{"name": n, "in": "query", "required": n == "start_time", "schema": schema}
                                 for n, schema in query]
        return out

    def named(param: str, ops: dict) -> dict:
        params = [{"name": param, "in": "path", "required": True, "schema": {"type": "string"}}]
        return {method: {**o, "parameters": params} for method, o in ops.items()}

    change = "change its settings (budget, limits, models; a field it does not know is a 400)"
    seconds, text = {"type": "integer"}, {"type": "string"}
    usage_query = (("start_time", seconds), ("end_time", seconds), ("bucket_width", text), ("limit", seconds),
                   ("page", seconds), ("group_by", {"type": "array", "items": text}))
    return {
        "/v1/me": {"get": op("this key: credit, budget left and its reset, limits and their use, models", (401,))},
        "/v1/admin/keys": {"get": op("every key with its credit and use (admin keys only)"),
                           "post": op("create a key; its secret is shown once", body=True)},
        "/v1/admin/keys/{name}": named("name", {"get": op("a key and what it uses now"),
                                                "post": op(change, body=True), "patch": op(change, body=True),
                                                "delete": op("revoke a key")}),
        "/v1/admin/teams": {"get": op("every team"), "post": op("create a team", body=True)},
        "/v1/admin/teams/{name}": named("name", {"get": op("a team, its keys and what it uses now"),
                                                 "post": op(change, body=True), "patch": op(change, body=True)}),
        "/v1/admin/topup": {"post": op('add credit: {"key": NAME, "amount": 5} or {"team": ...}', body=True)},
        "/v1/admin/rotate": {"post": op('a new secret for {"key": NAME}: same name, settings and history', body=True)},
        "/v1/admin/log": {"get": op("the admin actions, newest first")},
        "/v1/organization/usage/completions": {"get": op("token usage in time buckets, as OpenAI's usage API",
                                                         query=usage_query)},
        "/v1/organization/costs": {"get": op("costs in daily buckets, as OpenAI's costs API", query=usage_query)},
    }


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(schema: str, codes: tuple[int, ...]) -> dict:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ref(schema)}}}
            for c in codes}


def _post(summary: str, request: str, response: str, stream: bool = True) -> dict:
    content = {"application/json": {"schema": _ref(response)}}
    if stream:
        content["text/event-stream"] = {}
    return {"post": {"summary": summary,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
                     "responses": {"200": {"description": "answer", "content": content},
                                   **_errors("OpenAIError", (400, 401, 404, 413, 415, 429, 503))}}}


def document(settings: Settings) -> dict:
    chat = _post("OpenAI-compatible chat completion (stream: true for SSE)", "ChatRequest", "ChatCompletion")
    completions = _post("legacy text completion of raw prompts (no chat template)", "CompletionRequest", "Completion")
    embeddings = _post("unit-length embeddings, mean-pooled (or the model's own pooling)", "EmbeddingRequest",
                       "EmbeddingList", stream=False)
    responses = _post("OpenAI Responses API (stream: true for its events; docs/responses.md)", "ResponseRequest",
                      "Response")
    stored = {method: {"summary": summary, "parameters": [
        {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": _ref(schema)}}},
                      **_errors("OpenAIError", (401, 404))}}
        for method, summary, schema in (("get", "a stored response of this key", "Response"),
                                        ("delete", "delete a stored response of this key", "ResponseDeleted"))}
    models = {"get": {"summary": "loaded models", "responses": {"200": {"description": "list"},
                                                                **_errors("OpenAIError", (401,))}}}
    model = {"get": {"summary": "one loaded model", "parameters": [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "model", "content": {"application/json": {"schema": _ref("Model")}}},
                      **_errors("OpenAIError", (401, 404))}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "reverb-runtime", "version": "0.1.0",
                 "description": "OpenAI-compatible chat completions, completions, embeddings, responses and models, "
                                "Anthropic's Messages API, and the /api/endpoint gateway dialect."},
        "components": {"schemas": schemas(settings),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": chat,
            "/api/v1/chat/completions": chat,
            "/v1/completions": completions,
            "/api/v1/completions": completions,
            "/v1/embeddings": embeddings,
            "/api/v1/embeddings": embeddings,
            "/v1/responses": responses,
            "/api/v1/responses": responses,
            "/v1/responses/{response_id}": stored,
            "/api/v1/responses/{response_id}": stored,
            "/v1/models": models,
            "/api/v1/models": models,
            "/v1/models/{model}": model,
            "/api/v1/models/{model}": model,
            **_messages_paths(),
            **_account_paths(),
            "/api/endpoint": {"post": {
                "summary": "gateway dialect: credit-checked, priced, logged",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("GatewayRequest")}}},
                "responses": {"200": {"description": "result", "content": {
                    "application/json": {"schema": _ref("GatewaySuccess")}, "text/plain": {}}},
                    **_errors("GatewayError", (400, 401, 402, 404, 413, 415, 429, 503))}}},
            "/health": {"get": {"summary": "liveness, no key needed", "security": [],
                                "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (an operator key: admin, or given with --api-key)",
                                 "responses": {"200": {"description": "text"},
                                               **_errors("OpenAIError", (401, 403))}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "json"}}}},
            "/api/ps": {"get": {"summary": "loaded models: memory, slots, running requests, idle time (`reverb ps`; "
                                "operator keys only)", "responses": {"200": {"description": "json"},
                                                                     "403": {"description": "not an operator key"}}}},
        },
    }
