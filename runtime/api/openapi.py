"""The OpenAPI 3.1 document for both dialects, served at ``/openapi.json`` (behind the key like the rest).

Written as data; its limits come from the same constants and settings the validators use (``params.py``), so
the document cannot drift from what is enforced. The fuzz test (tests/test_fuzz.py) generates requests from these
very schemas and checks every answer against the error schemas below.
"""

from __future__ import annotations

from ..settings import Settings
from .params import LOGIT_BIAS_RANGE, MAX_LOGIT_BIAS, MAX_STOP, MAX_STOP_CHARS, ROLES, SAMPLING_FIELDS

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
    message = {
        "type": "object", "required": ["role", "content"],
        "properties": {"role": {"enum": sorted(ROLES)},
                       "content": {"oneOf": [text, {"type": "array", "items": {
                           "type": "object", "required": ["type", "text"],
                           "properties": {"type": {"const": "text"}, "text": text}}}]}},
    }
    return {"type": "array", "items": message, "minItems": 1, "maxItems": settings.max_messages}


def schemas(settings: Settings) -> dict:
    sampling, messages = _sampling(settings), _messages(settings)
    return {
        "ChatRequest": {
            "type": "object", "required": ["model", "messages"],
            "properties": {"model": {"type": "string"}, "messages": messages,
                           "stream": {"type": "boolean"}, "n": {"const": 1},
                           "stream_options": {"type": "object",
                                              "properties": {"include_usage": {"type": "boolean"}}},
                           **sampling},
        },
        "ChatCompletion": {
            "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "finish_reason": {"enum": ["stop", "length"]},
                    "message": {"type": "object", "properties": {"role": {"const": "assistant"},
                                                                 "content": {"type": "string"}}}}}},
                "usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                          "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens",
                                                                          "total_tokens")}}},
        },
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
                           "options": {"type": "object", "properties": {"stream": {"type": "boolean"},
                                                                        "stats": {"type": "boolean"},
                                                                        **sampling}}},
        },
        "GatewaySuccess": {
            "type": "object", "required": ["status", "result"],
            "properties": {"status": {"const": 1}, "result": {
                "type": "object", "required": ["response", "model", "request"],
                "properties": {"response": {"type": "string"}, "tokens_input": {"type": "integer"},
                               "tokens_output": {"type": "integer"}, "price": NUM, "model": {"type": "string"},
                               "request": {"type": "array"}}}},
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


def document(settings: Settings) -> dict:
    chat = {"post": {
        "summary": "OpenAI-compatible chat completion (stream: true for SSE)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChatRequest")}}},
        "responses": {"200": {"description": "completion", "content": {
            "application/json": {"schema": _ref("ChatCompletion")}, "text/event-stream": {}}},
            **_errors("OpenAIError", (400, 401, 404, 413, 415, 429, 503))},
    }}
    models = {"get": {"summary": "loaded models", "responses": {"200": {"description": "list"},
                                                                **_errors("OpenAIError", (401,))}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "reverb-runtime", "version": "0.1.0",
                 "description": "OpenAI-compatible chat completions and the /api/endpoint gateway dialect."},
        "components": {"schemas": schemas(settings),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": chat,
            "/api/v1/chat/completions": chat,
            "/v1/models": models,
            "/api/v1/models": models,
            "/api/endpoint": {"post": {
                "summary": "gateway dialect: credit-checked, priced, logged",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("GatewayRequest")}}},
                "responses": {"200": {"description": "result", "content": {
                    "application/json": {"schema": _ref("GatewaySuccess")}, "text/plain": {}}},
                    **_errors("GatewayError", (400, 401, 402, 404, 413, 415, 503))}}},
            "/health": {"get": {"summary": "liveness, no key needed", "security": [],
                                "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "json"}}}},
        },
    }
