"""The OpenAPI 3.1 document for both dialects, served at ``/openapi.json`` (behind the key like the rest).

Written as data; its limits come from the same constants and settings the validators use (``params.py``), so
the document cannot drift from what is enforced. The fuzz test (tests/test_fuzz.py) generates requests from these
very schemas and checks every answer against the error schemas below.
"""

from __future__ import annotations

from ..grammar.tools import MAX_TOOLS
from ..settings import Settings
from .completions import MAX_LOGPROBS, MAX_PROMPTS
from .params import (LOGIT_BIAS_RANGE, MAX_ID_CHARS, MAX_LOGIT_BIAS, MAX_STOP, MAX_STOP_CHARS, MAX_TOOL_CALLS, ROLES,
                     SAMPLING_FIELDS)
from .surface import MAX_METADATA, MAX_N, MAX_TOP_LOGPROBS

NUM = {"type": "number"}


def _sampling(settings: Settings) -> dict:
    out: dict = {name: {"type": kind, "minimum": lo, "maximum": hi} for name, kind, lo, hi, _ in SAMPLING_FIELDS}
    tokens = {"type": "integer", "minimum": 1, "maximum": settings.max_tokens_cap}
    out.update(
        max_tokens=tokens, max_completion_tokens=tokens,
        stop={"oneOf": [{"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
                        {"type": "array", "maxItems": MAX_STOP,
                         "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}}]},
        logit_bias={"type": "object", "maxProperties": MAX_LOGIT_BIAS, "additionalProperties": {
            **NUM, "minimum": LOGIT_BIAS_RANGE[0], "maximum": LOGIT_BIAS_RANGE[1]}},
    )
    return out


def _messages(settings: Settings) -> dict:
    text = {"type": "string", "maxLength": settings.max_message_chars}
    short = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    call = {"type": "object", "required": ["id", "type", "function"],
            "properties": {"id": short, "type": {"const": "function"},
                           "function": {"type": "object", "required": ["name", "arguments"],
                                        "properties": {"name": short, "arguments": text}}}}
    message = {
        "type": "object", "required": ["role", "content"],
        "properties": {"role": {"enum": sorted(ROLES)},
                       "content": {"oneOf": [text, {"type": "null"}, {"type": "array", "items": {
                           "type": "object", "required": ["type", "text"],
                           "properties": {"type": {"const": "text"}, "text": text}}}]},
                       "name": short, "tool_call_id": short,
                       "tool_calls": {"type": "array", "maxItems": MAX_TOOL_CALLS, "items": call}},
    }
    return {"type": "array", "items": message, "minItems": 1, "maxItems": settings.max_messages}


def _constraints() -> dict:
    """response_format and tools: the shapes; a schema keyword the grammar cannot enforce is a 400 naming it."""
    schema = {"type": "object", "description": "a JSON Schema (see the README for the keywords enforced)"}
    name = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"}
    tool = {"type": "object", "required": ["type", "function"],
            "properties": {"type": {"const": "function"},
                           "function": {"type": "object", "required": ["name"],
                                        "properties": {"name": name, "description": {"type": "string"},
                                                       "parameters": schema, "strict": {"type": "boolean"}}}}}
    return {
        "response_format": {"oneOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
            {"type": "object", "required": ["type", "json_schema"], "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {"type": "object", "required": ["name"], "properties": {
                    "name": name, "strict": {"type": "boolean"}, "description": {"type": "string"},
                    "schema": schema}}}}]},
        "tools": {"type": "array", "maxItems": MAX_TOOLS, "items": tool},
        "tool_choice": {"oneOf": [{"enum": ["none", "auto", "required"]}, {
            "type": "object", "required": ["type", "function"], "properties": {
                "type": {"const": "function"},
                "function": {"type": "object", "required": ["name"], "properties": {"name": name}}}}]},
        "parallel_tool_calls": {"type": "boolean"},
    }


def _accepted() -> dict:
    """Fields accepted with no effect here, or only with the value that asks for nothing (see surface.py)."""
    short = {"type": "string", "maxLength": MAX_ID_CHARS}
    return {"user": short, "safety_identifier": short, "prompt_cache_key": short,
            "metadata": {"type": "object", "maxProperties": MAX_METADATA, "additionalProperties": {"type": "string"}},
            "store": {"const": False}, "modalities": {"type": "array", "items": {"const": "text"}, "maxItems": 1},
            "service_tier": {"enum": ["auto", "default"]}, "verbosity": {"const": "medium"}}


def _usage(*keys: str) -> dict:
    return {"type": "object", "required": list(keys), "properties": {k: {"type": "integer"} for k in keys}}


def schemas(settings: Settings) -> dict:
    sampling, messages, constraints = _sampling(settings), _messages(settings), _constraints()
    n = {"type": "integer", "minimum": 1, "maximum": MAX_N, "description": "at most the server's slots"}
    stream_options = {"type": "object", "properties": {"include_usage": {"type": "boolean"},
                                                       "include_obfuscation": {"type": "boolean"}}}
    finish = {"enum": ["stop", "length", "tool_calls"]}
    tool_calls = {"type": "array", "items": {"type": "object", "required": ["id", "type", "function"]}}
    prompt_text = {"type": "string", "minLength": 1, "maxLength": settings.max_message_chars}
    return {
        "ChatRequest": {
            "type": "object", "required": ["model", "messages"],
            "properties": {"model": {"type": "string"}, "messages": messages,
                           "stream": {"type": "boolean"}, "n": n, "stream_options": stream_options,
                           "logprobs": {"type": "boolean"},
                           "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_TOP_LOGPROBS},
                           **sampling, **constraints, **_accepted()},
        },
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
                                                                 "tool_calls": tool_calls}}}}},
                "usage": _usage("prompt_tokens", "completion_tokens", "total_tokens")},
        },
        "CompletionRequest": {
            "type": "object", "required": ["model", "prompt"],
            "properties": {"model": {"type": "string"},
                           "prompt": {"oneOf": [prompt_text, {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS,
                                                              "items": prompt_text}]},
                           "stream": {"type": "boolean"}, "n": n, "stream_options": stream_options,
                           "logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
                           "echo": {"const": False}, "suffix": {"const": ""}, "best_of": {"const": 1},
                           "user": {"type": "string", "maxLength": MAX_ID_CHARS}, **sampling},
        },
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
        "EmbeddingRequest": {
            "type": "object", "required": ["model", "input"],
            "properties": {"model": {"type": "string"},
                           "input": {"oneOf": [prompt_text, {"type": "array", "minItems": 1,
                                                             "maxItems": settings.max_embedding_inputs,
                                                             "items": prompt_text}]},
                           "encoding_format": {"enum": ["float", "base64"]},
                           "user": {"type": "string", "maxLength": MAX_ID_CHARS}},
        },
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
        "GatewayRequest": {
            "type": "object", "required": ["model", "messages"],
            "properties": {"model": {"type": "string"}, "messages": messages,
                           "options": {"type": "object", "additionalProperties": False, "properties": {
                               "stream": {"type": "boolean"}, "stats": {"type": "boolean"},
                               "n": {"const": 1}, "logprobs": {"type": "boolean"},
                               "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_TOP_LOGPROBS},
                               **sampling, **constraints}}},
        },
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
    models = {"get": {"summary": "loaded models", "responses": {"200": {"description": "list"},
                                                                **_errors("OpenAIError", (401,))}}}
    model = {"get": {"summary": "one loaded model", "parameters": [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "model", "content": {"application/json": {"schema": _ref("Model")}}},
                      **_errors("OpenAIError", (401, 404))}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "reverb-runtime", "version": "0.1.0",
                 "description": "OpenAI-compatible chat completions, completions, embeddings and models, and the "
                                "/api/endpoint gateway dialect."},
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
            "/v1/models": models,
            "/api/v1/models": models,
            "/v1/models/{model}": model,
            "/api/v1/models/{model}": model,
            "/api/endpoint": {"post": {
                "summary": "gateway dialect: credit-checked, priced, logged",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("GatewayRequest")}}},
                "responses": {"200": {"description": "result", "content": {
                    "application/json": {"schema": _ref("GatewaySuccess")}, "text/plain": {}}},
                    **_errors("GatewayError", (400, 401, 402, 404, 413, 415, 503))}}},
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
