"""The OpenAI wire as an upstream speaks it: the request body reverb sends, token estimates, and reading the
upstream's events and errors. Pure: no I/O (``client.py`` does the HTTP).

Token estimates, because the upstream's tokenizer is unknown here:

- ``estimate`` (the count for the context check, and for settling when the upstream reports no usage):
  UTF-8 bytes / 3, rounded up, per message content (JSON for content that is not a string, and for tool calls),
  + 4 tokens per message + 3 for the reply's priming, + the JSON of ``tools``, ``functions``,
  ``response_format`` and ``tool_choice`` the same way. English runs ~4 bytes a token, so this errs high for
  prose; digits and scripts a tokenizer was not trained on can run higher.
- ``bound`` (what credit is held for): every token of a byte-level BPE or byte-fallback tokenizer covers at
  least one byte, so UTF-8 bytes + 8 per message + 64 for what the upstream's chat template adds (default system
  prompts) bounds the prompt. The request is settled on the upstream's own ``usage``, so the bound only sizes
  the hold.
"""

from __future__ import annotations

import json
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

from ...errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from ...request import Ask
from ...types import FinishReason, SamplingParams, Usage

PER_MESSAGE, PRIMING = 4, 3
BOUND_PER_MESSAGE, BOUND_TEMPLATE = 8, 64
PROMPT_FIELDS = ("tools", "functions", "response_format", "tool_choice")
LENGTH_ALIASES = ("max_tokens", "n_predict", "max_new_tokens")
SAFE_WORD = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_MESSAGE = 2000
DEFAULTS = SamplingParams()
MAX_TOKEN_BYTES = 16    # no common tokenizer's tokens average more UTF-8 bytes than this over an answer


def estimate_text(text: str) -> int:
    """The typical token count of a text: UTF-8 bytes / 3, rounded up."""
    return -(-len(text.encode("utf-8", "replace")) // 3)


def _pieces(ask: Ask) -> tuple[list[list[str]], list[str]]:
    """The prompt as text pieces per message, and the request-level prompt fields (as JSON)."""
    raw = ask.extra.get("messages") if ask.extra else None
    if not isinstance(raw, list):
        raw = [{"role": m.role, "content": m.content} for m in ask.messages]
    messages = []
    for m in raw:
        items = m.items() if isinstance(m, dict) else [("content", m)]
        messages.append([v if isinstance(v, str) else _json(v) for k, v in items if k != "role" and v is not None])
    fields = [_json(ask.extra[k]) for k in PROMPT_FIELDS if ask.extra.get(k) is not None]
    return messages, fields


def estimate_prompt(ask: Ask) -> tuple[int, int]:
    """(estimate, bound) of the prompt's tokens; see the module docstring."""
    messages, fields = _pieces(ask)
    estimate = PRIMING + sum(PER_MESSAGE + sum(map(estimate_text, m)) for m in messages)
    estimate += sum(map(estimate_text, fields))
    size = lambda s: len(s.encode("utf-8", "replace"))  # noqa: E731
    bound = BOUND_TEMPLATE + sum(BOUND_PER_MESSAGE + sum(map(size, m)) for m in messages) + sum(map(size, fields))
    return estimate, max(bound, estimate)


def prediction_bound(ask: Ask) -> int:
    """The most tokens a relayed ``prediction`` can hold (its UTF-8 bytes as JSON: a token spells at least one),
    which an OpenAI-style upstream bills as completion tokens when it rejects them; 0 without one."""
    value = ask.extra.get("prediction") if ask.extra else None
    return len(_json(value).encode("utf-8", "replace")) if value is not None else 0


def prompt_floor(ask: Ask) -> int:
    """The fewest tokens the prompt can be: its UTF-8 bytes / MAX_TOKEN_BYTES, rounded up (at least 1)."""
    messages, fields = _pieces(ask)
    size = sum(len(p.encode("utf-8", "replace")) for m in messages for p in m)
    size += sum(len(f.encode("utf-8", "replace")) for f in fields)
    return max(1, -(-size // MAX_TOKEN_BYTES))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def request_body(model: str, ask: Ask, params: SamplingParams) -> dict:
    """What reverb sends upstream: the client's own fields when it has them (the OpenAI dialect passes its
    request through unchanged), else the Ask's messages and non-default sampling; always streaming with usage,
    the upstream's model name, and the max_tokens the credit hold was made for."""
    if ask.extra:
        body = dict(ask.extra)
    else:
        body = {"messages": [{"role": m.role, "content": m.content} for m in ask.messages]}
        for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty"):
            if getattr(params, name) != getattr(DEFAULTS, name):
                body[name] = getattr(params, name)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in params.logit_bias}
    body.update(model=model, stream=True, stream_options={"include_usage": True})
    # The hold covers max_tokens per choice, so the upstream must never be asked for more: the limit goes under
    # the name the client used (max_tokens by default), and over every other name an engine reads it by
    # (llama-server prefers n_predict, TGI takes max_new_tokens).
    body["max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"] = params.max_tokens
    for alias in LENGTH_ALIASES:
        if alias in body:
            body[alias] = params.max_tokens
    return body


def finish_of(reason: object) -> FinishReason:
    return FinishReason.LENGTH if reason == "length" else FinishReason.STOP


def usage_of(event: Mapping) -> Usage | None:
    """The upstream's reported usage, when it is a pair of counts."""
    u = event.get("usage")
    if not isinstance(u, dict):
        return None
    p, c = u.get("prompt_tokens"), u.get("completion_tokens")
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 40 for x in (p, c)):
        return None
    return Usage(p, c)


def delta_pieces(choice: Mapping) -> tuple[str, int]:
    """(content text, typical tokens of everything the delta carries: text, refusal, tool-call pieces)."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return "", 0
    text = delta.get("content") if isinstance(delta.get("content"), str) else ""
    rest = {k: v for k, v in delta.items() if k not in ("role", "content") and v is not None}
    return text, estimate_text(text) + (estimate_text(_json(rest)) if rest else 0)


def scrub(message: object, secret: str | None) -> str:
    """An upstream's message made safe to show: a string, without the upstream key or control characters, and
    of bounded length."""
    text = message if isinstance(message, str) else ""
    if secret:
        text = text.replace(secret, "***")
    text = "".join(ch if ch.isprintable() else " " for ch in text[:MAX_MESSAGE * 2])
    return text[:MAX_MESSAGE]


MAX_DEPTH = 64


def holds(value: Any, secret: str, depth: int = 0) -> bool:
    """Whether any string in ``value`` (parsed JSON, object keys included) contains ``secret``. Raises
    UpstreamError for JSON nested deeper than MAX_DEPTH (no OpenAI event is)."""
    if isinstance(value, str):
        return secret in value
    if depth > MAX_DEPTH:
        raise UpstreamError("The upstream sent an event nested too deeply", code="upstream_bad_response")
    if isinstance(value, dict):
        return any(secret in k or holds(v, secret, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(holds(v, secret, depth + 1) for v in value)
    return False


def scrub_all(value: Any, secret: str | None) -> Any:
    """``value`` (parsed JSON) with the upstream key replaced by ``***`` in every string, object keys included;
    the value itself when nothing holds the key."""
    if not secret or not holds(value, secret):
        return value
    if isinstance(value, str):
        return value.replace(secret, "***")
    if isinstance(value, dict):
        return {scrub_all(k, secret): scrub_all(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_all(v, secret) for v in value]
    return value


def _word(value: object, secret: str | None) -> str | None:
    """A code or type passed on only when it is a plain word that does not hold the upstream key."""
    if not isinstance(value, str) or not SAFE_WORD.match(value) or (secret and secret in value):
        return None
    return value


def parse_retry_after(value: str | None, now: float | None = None) -> int | None:
    """An upstream's Retry-After as seconds from now (it may be seconds or an HTTP date); None when it is neither.
    What clients are told is clamped by the one Retry-After rule (``errors.retry_after``)."""
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0, int(when - (time.time() if now is None else now) + 0.999))


def error_for(status: int, body: bytes, model: str, secret: str | None,
              retry_after_header: str | None) -> Exception:
    """The error for an upstream's HTTP error status.

    4xx is the request's fault there: passed on with the upstream's message, except 401/403/407 (the upstream
    refused reverb's own key) and 404 (the upstream does not know the configured model or path), which are about
    reverb's configuration, not the caller's request, and become 502. 408 is a timeout (504); 5xx is 502.
    """
    if status in (401, 403, 407):
        return UpstreamError(f"The upstream for model '{model}' refused this server's credentials",
                             model=model, code="upstream_auth_failed")
    if status == 404:
        return UpstreamError(f"The upstream for model '{model}' does not know its configured model or path",
                             model=model, code="upstream_not_found")
    if status == 408:
        return UpstreamTimeout(f"The upstream for model '{model}' timed out", model=model)
    if status >= 500 or status < 400:
        return UpstreamError(f"The upstream for model '{model}' failed (HTTP {status})", model=model)
    err: Any = None
    try:
        doc = json.loads(body)
        err = doc.get("error", doc) if isinstance(doc, dict) else None
    except (ValueError, RecursionError):
        pass
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        err = {}
    message = scrub(err.get("message") or err.get("detail"), secret) or f"The upstream refused the request " \
                                                                         f"(HTTP {status})"
    param = err.get("param") if isinstance(err.get("param"), str) else None
    return UpstreamRejected(message, status=status, model=model, param=scrub(param, secret)[:64] or None,
                            code=_word(err.get("code"), secret), type=_word(err.get("type"), secret),
                            retry_after=parse_retry_after(retry_after_header))


def event_error(event: Mapping, model: str, secret: str | None) -> Exception | None:
    """An error the upstream reported inside a stream (``data: {"error": ...}``), as ours."""
    err = event.get("error")
    if err is None:
        return None
    message = scrub(err.get("message") if isinstance(err, dict) else err, secret)
    return UpstreamError(f"The upstream for model '{model}' failed mid-answer" + (f": {message}" if message else ""),
                         model=model)
