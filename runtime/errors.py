"""The whole error hierarchy of reverb-runtime.

Every failure a caller can see is one of these classes. Each carries structured fields (``param``,
``model``...) so the HTTP layer maps it by class, in one table per dialect (``api/errors.py``), and never by
reading message text. Messages are written for the person who sent the request: they never contain a
file path from the server, a raw key or an exception's repr.

    ReverbError
    ├── ConfigError                 bad settings or models.toml (start-up, CLI)
    ├── ModelLoadError              a GGUF that cannot be loaded, or a template that does not compile
    │   └── UnsafeModelFile         a GGUF rejected by the header pre-check
    ├── DownloadError               fetching a model from the hub failed
    │   ├── RemoteFileMissing       the repo or file does not exist
    │   ├── ChecksumMismatch        the bytes do not match the pinned sha256
    │   └── OfflineError            the file is not cached and the network is off
    ├── RequestError                the caller's request is at fault (4xx)
    │   ├── InvalidRequest          400, names ``param``
    │   │   ├── ContextLengthExceeded   400 context_length_exceeded
    │   │   ├── TemplateError           400, the chat template refused the conversation
    │   │   └── GrammarTooCostly        400 grammar_too_costly: a schema over the grammar's work bounds
    │   ├── AuthenticationError     401
    │   ├── PermissionDenied        403, a valid key that may not use this route (/metrics needs an operator)
    │   ├── InsufficientCredit      402 (gateway) / 429 insufficient_quota (OpenAI)
    │   │   └── BudgetExceeded      the same, for a period budget (names it and when it resets)
    │   ├── RateLimited             429 rate_limit_exceeded, Retry-After when the capacity asked for is free
    │   ├── ModelNotFound           404
    │   ├── NotFound                404, no such path
    │   ├── MethodNotAllowed        405
    │   ├── RequestTimeout          408, the body came too slowly
    │   ├── PayloadTooLarge         413
    │   ├── UnsupportedMediaType    415
    │   └── UpstreamRejected        the upstream's own 4xx, its status and message passed on
    ├── OverloadedError             503 with Retry-After
    ├── LedgerError                 the ledger could not record money or usage (fail closed)
    ├── EngineError                 llama.cpp failed mid-request
    ├── RemoteError                 `reverb chat --url`: the server could not be reached or answered wrongly
    └── UpstreamError               502: an OpenAI-compatible upstream failed (5xx, bad stream, refused our key)
        ├── UpstreamUnavailable     502 upstream_unavailable: unreachable or refusing the connection
        └── UpstreamTimeout         504 upstream_timeout: no byte within the entry's timeout
"""

from __future__ import annotations

import math
import re

QUOTE_CHARS = 64   # the most of one client value an error message (or its param) quotes
_SEGMENT = re.compile(r"[^.\[\]]{%d,}" % (QUOTE_CHARS + 1))


def quote(value: object) -> str:
    """A client's value as an error may show it: its first 64 characters, then '...' when there were more;
    characters that are not printable (control characters, lone surrogates) shown as escapes. Every message
    that repeats something a client sent goes through here, so a 500 KB model name is never echoed whole."""
    text = value if isinstance(value, str) else repr(value)
    cut = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                  for c in text[:QUOTE_CHARS])
    return cut + ("..." if len(text) > QUOTE_CHARS else "")


def quote_path(path: str) -> str:
    """A param path (``response_format.json_schema.schema.properties.<name>``) with each segment quoted."""
    if len(path) <= QUOTE_CHARS and path.isprintable():
        return path
    path = _SEGMENT.sub(lambda m: quote(m.group()), "".join(c if c.isprintable() else quote(c) for c in path))
    return path if len(path) <= 4 * QUOTE_CHARS else path[:4 * QUOTE_CHARS] + "..."


class ReverbError(Exception):
    """Base of every error reverb-runtime raises on purpose. ``param`` is bounded by ``quote_path``: a path may
    hold a client's field names."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, model: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = quote_path(param) if isinstance(param, str) else param
        self.model = model


class ConfigError(ReverbError):
    """Settings or models.toml are wrong; the message names the file, the model and the field."""

    code = "config_error"


class ModelLoadError(ReverbError):
    """A model could not be loaded (missing file, llama.cpp refused it, template does not compile)."""

    code = "model_load_error"


class UnsafeModelFile(ModelLoadError):
    """A GGUF failed the header pre-check before llama.cpp saw it."""

    code = "unsafe_model_file"


class DownloadError(ReverbError):
    """Fetching a model's file from the hub failed."""

    code = "download_error"


class RemoteFileMissing(DownloadError):
    code = "remote_file_missing"


class ChecksumMismatch(DownloadError):
    code = "checksum_mismatch"


class OfflineError(DownloadError):
    code = "offline"


class RequestError(ReverbError):
    """The request is at fault; the client can fix it."""

    code = "invalid_request"


class InvalidRequest(RequestError):
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, model: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, model=model)
        if code:
            self.code = code


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class TemplateError(InvalidRequest):
    code = "template_error"


class GrammarTooCostly(InvalidRequest):
    """A grammar over a bound on work: refused at compile, or ending its answer mid-generation."""
    code = "grammar_too_costly"


class AuthenticationError(RequestError):
    code = "invalid_api_key"


class PermissionDenied(RequestError):
    code = "permission_denied"


class InsufficientCredit(RequestError):
    """Not enough credit (or budget) for the request's worst case. ``needed`` and ``left`` (micro-units) let the
    service say what the request would hold against what is left."""

    code = "insufficient_credit"

    def __init__(self, message: str, *, needed: int | None = None, left: int | None = None,
                 model: str | None = None):
        super().__init__(message, model=model)
        self.needed = needed
        self.left = left


class BudgetExceeded(InsufficientCredit):
    """A key's or team's period budget would be passed; the message names the budget and when it resets."""

    code = "budget_exceeded"


class RateLimited(RequestError):
    """A requests-, tokens-per-minute or concurrency limit. ``retry_after``: seconds until the capacity asked for
    is free (None: never, the request alone is larger than the limit). ``limits``: the rate-limit header values.
    ``type``: which limit, as OpenAI's error type says it: ``requests`` or ``tokens``."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None, limits: dict | None = None,
                 type: str = "requests"):  # noqa: A002
        super().__init__(message)
        self.retry_after = retry_after
        self.limits = limits
        self.type = type


class ModelNotFound(RequestError):
    code = "model_not_found"


class NotFound(RequestError):
    code = "not_found"


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"


class RequestTimeout(RequestError):
    code = "request_timeout"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"


# Retry-After (seconds) by what refused the request; ``retry_after`` below states the whole rule.
RETRY_BUSY = 1          # a limit reached this instant (connections, slots, the wait queue): a slot frees in a step
RETRY_WAITED = 2        # the request waited its whole queue timeout: the model is saturated, back off more
RETRY_GOING_AWAY = 5    # the server is shutting down or its ledger is unavailable: another server, or later
RETRY_UPSTREAM_MAX = 60  # an upstream's own Retry-After is passed on within 0..60 s


class OverloadedError(ReverbError):
    """Every slot is busy and the wait queue is full, or the wait timed out."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = RETRY_BUSY, model: str | None = None):
        super().__init__(message, model=model)
        self.retry_after = retry_after


class LedgerError(ReverbError):
    """The ledger could not record a money move or a usage row; the request must not claim success."""

    code = "ledger_unavailable"


class EngineError(ReverbError):
    """llama.cpp failed while running a request."""

    code = "engine_error"


class RemoteError(ReverbError):
    """``reverb chat --url``: the server could not be used (unreachable, refused the key, answered non-JSON)."""

    code = "remote_error"


class UpstreamRejected(RequestError):
    """An upstream answered the request with a 4xx: the request is at fault there. Its status, message, and
    (when they are plain strings) its type, code and param are passed on in the caller's dialect. The message is
    scrubbed of the upstream key before it gets here (``backends/upstream``)."""

    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, model: str | None = None, param: str | None = None,
                 code: str | None = None, type: str | None = None, retry_after: int | None = None):  # noqa: A002
        super().__init__(message, param=param, model=model)
        self.status = status
        if code:
            self.code = code
        self.type = type
        self.retry_after = retry_after


class UpstreamError(ReverbError):
    """An OpenAI-compatible upstream failed: a 5xx, a stream cut mid-way, a body that is not its protocol, or a
    refusal of reverb's own upstream key. The message is ours; the upstream's details go to the server log."""

    code = "upstream_error"

    def __init__(self, message: str, *, model: str | None = None, code: str | None = None):
        super().__init__(message, model=model)
        if code:
            self.code = code


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


def retry_after(error: BaseException) -> int | None:
    """The Retry-After header's value, in whole seconds, for a refused request, or None for no header. Every
    Retry-After reverb sends is this function's answer (api/errors.py), by one rule: the first moment trying again
    can succeed, by what refused the request.

    - A limit reached this instant (requests in progress, slots, the wait queue, a key's slots or waiting jobs,
      the preparation pool, the embeddings queue, a key's or team's concurrent requests): ``RETRY_BUSY``, 1 s,
      as a slot frees within a step.
    - The request waited its whole queue timeout: ``RETRY_WAITED``, 2 s: the model is saturated, back off more.
    - The server is going away (shutting down) or its ledger is unavailable: ``RETRY_GOING_AWAY``, 5 s: another
      server, or this one later.
    - A requests- or tokens-per-minute limit (RateLimited): when its window has the capacity asked for, rounded up
      to a second, at least 1; none when the request alone is larger than the limit (it can never pass).
    - An upstream's own 4xx (UpstreamRejected): the upstream's Retry-After, clamped to 0..``RETRY_UPSTREAM_MAX``,
      so a hostile or confused upstream cannot tell clients to stay away for a day.
    - A test server (``--test-control``) sends what its test asked for: an injected fault's value, a replayed
      cassette's recorded header.
    - Any other error: none.
    """
    if isinstance(error, RateLimited):
        return None if error.retry_after is None else max(1, math.ceil(error.retry_after))
    if isinstance(error, UpstreamRejected):
        return None if error.retry_after is None else max(0, min(RETRY_UPSTREAM_MAX, error.retry_after))
    if isinstance(error, OverloadedError):
        return error.retry_after
    if isinstance(error, LedgerError):
        return RETRY_GOING_AWAY
    return None
