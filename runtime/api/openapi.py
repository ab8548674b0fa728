"""The OpenAPI 3.1 document for both dialects, served at ``/openapi.json`` (behind the key like the rest).

Written as data, by hand: the wire contract is small, and the fuzz test (tests/test_fuzz.py) generates requests
from these very schemas and checks every answer against the error schemas below.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

NUM = {"type": "number"}
SAMPLING = {
    "temperature": {**NUM, "minimum": 0, "maximum": 2}, "top_p": {**NUM, "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0}, "min_p": {**NUM, "minimum": 0, "maximum": 1},
    "seed": {"type": "integer"}, "presence_penalty": {**NUM, "minimum": -2, "maximum": 2},
    "frequency_penalty": {**NUM, "minimum": -2, "maximum": 2},
    "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "logit_bias": {"type": "object", "additionalProperties": {**NUM, "minimum": -100, "maximum": 100}},
}
MESSAGE = {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "user", "assistant", "developer"]},
                   "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
                       "type": "object", "required": ["type", "text"],
                       "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}},
}
SCHEMAS = {
    "ChatRequest": {
        "type": "object", "required": ["model", "messages"],
        "properties": {"model": {"type": "string"}, "messages": {"type": "array", "items": MESSAGE, "minItems": 1},
                       "stream": {"type": "boolean"}, "n": {"const": 1},
                       "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
                       **SAMPLING},
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
                                                "param": {"type": ["string", "null"]}, "code": {"type": "string"}}}},
    },
    "GatewayRequest": {
        "type": "object", "required": ["model", "messages"],
        "properties": {"model": {"type": "string"}, "messages": {"type": "array", "items": MESSAGE, "minItems": 1},
                       "options": {"type": "object", "properties": {"stream": {"type": "boolean"},
                                                                    "stats": {"type": "boolean"}, **SAMPLING}}},
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


_CHAT = {
    "post": {
        "summary": "OpenAI-compatible chat completion (stream: true for SSE)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChatRequest")}}},
        "responses": {"200": {"description": "completion", "content": {
            "application/json": {"schema": _ref("ChatCompletion")}, "text/event-stream": {}}},
            **_errors("OpenAIError", (400, 401, 404, 413, 415, 429, 503))},
    }
}
DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "reverb-runtime", "version": "0.1.0",
             "description": "OpenAI-compatible chat completions and the /api/endpoint gateway dialect."},
    "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/chat/completions": _CHAT,
        "/api/v1/chat/completions": _CHAT,
        "/v1/models": {"get": {"summary": "loaded models", "responses": {"200": {"description": "list"},
                                                                           **_errors("OpenAIError", (401,))}}},
        "/api/endpoint": {"post": {
            "summary": "gateway dialect: credit-checked, priced, logged",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("GatewayRequest")}}},
            "responses": {"200": {"description": "result", "content": {
                "application/json": {"schema": _ref("GatewaySuccess")}, "text/plain": {}}},
                **_errors("GatewayError", (400, 401, 402, 404, 413, 415, 503))}}},
        "/health": {"get": {"summary": "liveness, no key needed", "security": [],
                            "responses": {"200": {"description": "ok"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    },
}


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(DOCUMENT)
