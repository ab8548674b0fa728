"""ONE table: error class -> HTTP status and the codes each dialect shows. Nothing here reads message text.

OpenAI dialect body: ``{"error": {"message", "type", "param", "code"}}`` (all four keys, ``code`` a string).
Gateway dialect body: ``{"status": 0, "error": {"code", "message"}}``.
Anthropic dialect body (/v1/messages): ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from ..errors import (AuthenticationError, BudgetExceeded, ContextLengthExceeded, EngineError,
                      InsufficientCredit, InvalidRequest, LedgerError, MethodNotAllowed, ModelLoadError, ModelNotFound,
                      NotFound, OverloadedError, PayloadTooLarge, PermissionDenied, RateLimited, RequestTimeout,
                      ReverbError, TemplateError, UnsupportedMediaType, UpstreamError, UpstreamRejected,
                      UpstreamTimeout, UpstreamUnavailable, retry_after)

# class: (status, openai type, openai code, openai status override, gateway code, (anthropic type, status override))
TABLE: dict[type[ReverbError], tuple[int, str, str | None, int | None, str | None, tuple[str, int | None]]] = {
    ContextLengthExceeded: (400, "invalid_request_error", "context_length_exceeded", None, None,
        ("invalid_request_error", None)),
    TemplateError: (400, "invalid_request_error", None, None, None, ("invalid_request_error", None)),
    InvalidRequest: (400, "invalid_request_error", None, None, None, ("invalid_request_error", None)),
    AuthenticationError: (401, "authentication_error", "invalid_api_key", None, None, ("authentication_error", None)),
    # A valid key without the right (not 401: the key is fine, and clients must not drop it as revoked).
    PermissionDenied: (403, "permission_error", "permission_denied", None, None, ("permission_error", None)),
    # OpenAI answers an exhausted budget with 429 insufficient_quota and its SDKs do not retry that; Anthropic answers
    # a credit balance too low with 400 invalid_request_error (docs/anthropic.md). Anthropic's overloaded is 529.
    BudgetExceeded: (402, "insufficient_quota", "insufficient_quota", 429, "budget_exceeded",
        ("invalid_request_error", 400)),
    InsufficientCredit: (402, "insufficient_quota", "insufficient_quota", 429, "insufficient_credit",
        ("invalid_request_error", 400)),
    RateLimited: (429, "requests", "rate_limit_exceeded", None, "rate_limit_exceeded", ("rate_limit_error", None)),
    ModelNotFound: (404, "invalid_request_error", "model_not_found", None, None, ("not_found_error", None)),
    NotFound: (404, "invalid_request_error", "not_found", None, None, ("not_found_error", None)),
    MethodNotAllowed: (405, "invalid_request_error", "method_not_allowed", None, None, ("invalid_request_error", None)),
    RequestTimeout: (408, "invalid_request_error", "request_timeout", None, None, ("invalid_request_error", None)),
    PayloadTooLarge: (413, "invalid_request_error", "payload_too_large", None, None, ("request_too_large", None)),
    UnsupportedMediaType: (415, "invalid_request_error", "unsupported_media_type", None, None,
        ("invalid_request_error", None)),
    OverloadedError: (503, "server_error", "overloaded", None, None, ("overloaded_error", 529)),
    LedgerError: (503, "server_error", "ledger_unavailable", None, None, ("api_error", None)),
    EngineError: (500, "server_error", "engine_error", None, None, ("api_error", None)),
    # a model loaded on demand (--on-demand) that failed to load: the server is fine, that model is not
    ModelLoadError: (503, "server_error", "model_load_error", None, None, ("api_error", None)),
    # An upstream's own 4xx keeps its status (UpstreamRejected.status), type and code where it gave them.
    UpstreamRejected: (400, "invalid_request_error", None, None, None, ("invalid_request_error", None)),
    UpstreamUnavailable: (502, "server_error", "upstream_unavailable", None, None, ("api_error", None)),
    UpstreamTimeout: (504, "server_error", "upstream_timeout", None, None, ("timeout_error", 504)),
    UpstreamError: (502, "server_error", None, None, None,
        ("api_error", None)),   # code: upstream_error, upstream_cut, ...
}

GENERIC = "The server could not complete the request"


def _row(exc: BaseException):
    for cls in type(exc).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return None


def _public_message(exc: BaseException) -> str:
    # Engine and unknown failures keep their details in the server log, not in the body.
    if isinstance(exc, ReverbError) and not isinstance(exc, EngineError):
        return exc.message
    return GENERIC


def _headers(exc: BaseException, status: int) -> dict[str, str]:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    seconds = retry_after(exc)   # the one Retry-After rule (errors.py)
    if seconds is not None:
        headers["Retry-After"] = str(seconds)
    if isinstance(exc, InsufficientCredit) or (isinstance(exc, RateLimited) and exc.retry_after is None):
        headers["x-should-retry"] = "false"
    if isinstance(exc, RateLimited) and exc.retry_after is not None:   # OpenAI's precise form of the same wait
        headers["retry-after-ms"] = str(max(1, math.ceil(exc.retry_after * 1000)))
    return headers


def _status(exc: BaseException, status: int) -> int:
    return exc.status if isinstance(exc, UpstreamRejected) else status


def openai_body(exc: BaseException) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) for the OpenAI dialect."""
    row = _row(exc)
    if row is None:
        status, etype, code = 500, "server_error", "internal_error"
    else:
        status, etype, code, override, _, _ = row
        status = _status(exc, override or status)
        etype = (exc.type if isinstance(exc, (UpstreamRejected, RateLimited)) else None) or etype
        code = code or getattr(exc, "code", None) or "invalid_request"
    param = exc.param if isinstance(exc, ReverbError) else None
    body = {"error": {"message": _public_message(exc), "type": etype, "param": param, "code": code}}
    return status, body, _headers(exc, status)


def gateway_body(exc: BaseException) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) for the /api/endpoint dialect."""
    row = _row(exc)
    if row is None:
        status, code = 500, "internal_error"
    else:
        status, _, ocode, _, gcode, _ = row
        status = _status(exc, status)
        code = gcode or ocode or getattr(exc, "code", None) or "invalid_request"
    body = {"status": 0, "error": {"code": code, "message": _public_message(exc)}}
    if isinstance(exc, ReverbError) and exc.param:
        body["error"]["param"] = exc.param
    return status, body, _headers(exc, status)


# What Anthropic's clients recognise: Claude Code tells its user "Credit balance too low" and "Prompt is too long"
# from these message openings.
ANTHROPIC_LEAD = {InsufficientCredit: "Your credit balance is too low: ", ContextLengthExceeded: "prompt is too long: "}
ANTHROPIC_BY_STATUS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                       413: "request_too_large", 429: "rate_limit_error"}


def anthropic_body(exc: BaseException) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) for the Messages dialect."""
    row = _row(exc)
    if row is None:
        status, etype = 500, "api_error"
    else:
        status, _, _, _, _, (etype, override) = row
        status = _status(exc, override or status)
        if isinstance(exc, UpstreamRejected):
            etype = ANTHROPIC_BY_STATUS.get(status, etype)
    lead = next((text for cls, text in ANTHROPIC_LEAD.items() if isinstance(exc, cls)), "")
    body = {"type": "error", "error": {"type": etype, "message": lead + _public_message(exc)}}
    return status, body, _headers(exc, status)


FORMATS = {"openai": openai_body, "gateway": gateway_body, "anthropic": anthropic_body}


def error_response(exc: BaseException, dialect: str, request_id: str | None = None) -> JSONResponse:
    """The error as a response in ``dialect``'s format (see routes.py for which path speaks which)."""
    status, body, headers = FORMATS[dialect](exc)
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)
