"""Reading a request body against the field table (fields.py): each row's check, the rules across fields, then
the view the resolved model needs.

``read(body, dialect, settings)`` checks a body against the table once; ``parse`` (the handler's one call) then
takes the local view (``for_local``: every field honoured or refused) or, when the model named is behind an
upstream, the relay view (``for_upstream``: reverb checks only what it needs and passes the client's fields on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, Mapping

from ..errors import InvalidRequest, quote
from ..request import Ask
from ..settings import Settings
from ..types import SamplingParams
from . import blocks, chatbody
from .checks import (Site)

from .fields import (CHAT, CHATS, COMPLETIONS, DEFAULT_COMPLETION_TOKENS, DIALECTS, GATEWAY, OPTIONS, RESPONSES,
                     STRICT, TRANSLATED, Field, _d, _HEADS, _NAMES, _ROWS, rows)
from .fields import EMBEDDINGS as EMBEDDINGS, FIELDS as FIELDS, MESSAGES as MESSAGES, NOTHING as NOTHING  # re-exported


def wire_name(row: Field, dialect: str) -> str:
    """Where the field sits in the dialect's body, as a param path."""
    return row.key(dialect) if row.top or dialect != GATEWAY else OPTIONS + row.key(dialect)


# Where a dialect spells a param the backends name by its chat name: (chat prefix, the dialect's prefix).
RENAMES: Mapping[str, tuple[tuple[str, str], ...]] = {
    RESPONSES: (("messages", "input"), ("max_tokens", "max_output_tokens"),
                ("response_format.json_schema.", "text.format."), ("response_format", "text.format")),
}


def wire_param(param: str | None, dialect: str) -> str | None:
    """A param named by its OpenAI name (as backends name them) under the dialect's own path: the gateway reads
    its options under ``options.``; Responses and Messages spell some fields their own way."""
    if param is not None and dialect in TRANSLATED:
        return blocks.wire_param(param)
    if param is not None and dialect in RENAMES:
        for chat, own in RENAMES[dialect]:
            if param == chat or param.startswith(chat) and (chat.endswith(".") or param[len(chat)] in ".["):
                return own + param[len(chat):]
        return re.sub(r"^tools\[(\d+)\]\.function\.", r"tools[\1].", param)
    if param is None or dialect != GATEWAY:
        return param
    head = param.split(".")[0].split("[")[0]
    return OPTIONS + param if head in _NAMES[GATEWAY] and head not in ("model", "messages") else param


# -- rules across fields -------------------------------------------------------------------------------------------

Values = dict  # field name -> checked value


def _top_logprobs_needs_logprobs(v: Values, dialect: str) -> None:
    if v.get("top_logprobs") is not None and not v.get("logprobs"):
        p = _param("top_logprobs", dialect)
        raise InvalidRequest(f"'{p}' needs 'logprobs': true", param=p)


def _best_of_is_n(v: Values, dialect: str) -> None:
    if v.get("best_of") is not None and v["best_of"] != (v.get("n") or 1):
        raise InvalidRequest(_BY_NAME[COMPLETIONS]["best_of"].refused.format(p="best_of"), param="best_of")


def _plain_stream_carries_text_only(v: Values, dialect: str) -> None:
    tools = v.get("tools")
    if v.get("stream") and (v.get("logprobs") or (tools is not None and tools.choice != "none")):
        raise InvalidRequest("a plain-text stream cannot carry tool calls or logprobs", param=OPTIONS + "stream")


def _prediction_has_one_choice(v: Values, dialect: str) -> None:
    if v.get("prediction") is not None and (v.get("n") or 1) > 1:
        raise InvalidRequest("'n' must be 1 with 'prediction' (as OpenAI's Predicted Outputs)", param="n")


RULES: tuple[tuple[frozenset[str], Callable[[Values, str], None]], ...] = (
    (CHATS, _top_logprobs_needs_logprobs),
    (_d(COMPLETIONS), _best_of_is_n),
    (_d(CHAT), _prediction_has_one_choice),
    (_d(GATEWAY), _plain_stream_carries_text_only),
)
_BY_NAME = {d: {f.name: f for f in _ROWS[d]} for d in DIALECTS}


def _param(name: str, dialect: str) -> str:
    return wire_name(_BY_NAME[dialect][name], dialect)


# -- reading a body ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Render:
    """How the answer is written, beyond the Ask: usage in the last stream event, the embeddings' encoding, the
    gateway's stats."""
    include_usage: bool = False
    encoding_format: str = "float"
    stats: bool = True
    headers: tuple[tuple[str, str], ...] = ()   # more response headers the dialect sends
    state: object = None                        # a dialect's own state for its renderers (api/responses.py)


@dataclass(frozen=True)
class Reading:
    """A body checked against the table: each row's value or its refusal, in table order."""
    dialect: str
    body: dict
    site: Site
    values: Values
    errors: dict            # row name -> InvalidRequest
    error: InvalidRequest | None

    def for_local(self) -> tuple[Ask, Render]:
        """The request as every field says, for a model served here. Raises the first refusal."""
        if self.error is not None:
            raise self.error
        return _build(self.dialect, self.values, self.site.settings)

    def translated(self) -> tuple[Ask, Render]:
        """A dialect that is not chat, for a model behind an upstream: every field checked as for a local model,
        then the Ask sent as a Chat Completions body (``Ask.extra``); a local model may stand in."""
        ask, render = self.for_local()
        return replace(ask, extra=MappingProxyType(chatbody.request(ask))), render

    def for_upstream(self) -> tuple[Ask, Render]:
        """The request for a model behind an OpenAI-compatible upstream: the client's fields go upstream
        unchanged (``Ask.extra``); reverb checks only what it needs (the relay rows: the model, the messages'
        shape and size, max_tokens for the credit hold, n). ``Ask.local`` says whether a local model may stand
        in (a fallback): only for a request that passes the local checks, uses only rows marked ``fallback``
        and asks for one choice (a local job's choices are separate streams, which the relay does not render).
        """
        if self.dialect in TRANSLATED:
            return self.translated()
        relayed: Values = {}
        for row in rows(self.dialect):
            if row.relay is True:
                if row.name in self.errors:
                    raise self.errors[row.name]
                relayed[row.name] = self.values.get(row.name)
            elif row.relay:
                relayed[row.name] = row.relay(self.body.get(row.key(self.dialect)), wire_name(row, self.dialect),
                                              self.site)
        names = {f.key(self.dialect) for f in rows(self.dialect) if f.fallback}
        local = self.error is None and set(self.body) <= names and self.body.get("n") in (None, 1)
        if local:
            ask, _ = _build(self.dialect, self.values, self.site.settings)
        else:
            max_tokens = relayed.get("max_completion_tokens") or relayed.get("max_tokens")
            ask = Ask(model=relayed["model"], messages=relayed["messages"],
                      sampling=SamplingParams(max_tokens=max_tokens), stream=bool(relayed.get("stream")))
        extra = {k: v for k, v in self.body.items() if k not in RELAY_OWN}   # UTF-8 clean: body.py checks that
        return (replace(ask, extra=MappingProxyType(extra), local=local),
                Render(include_usage=bool(relayed.get("stream_options"))))


RELAY_OWN = ("model", "stream", "stream_options")     # reverb's to set on the upstream request


def read(body: dict, dialect: str, settings: Settings) -> Reading:
    """Check every row of ``dialect`` against ``body``. Raises InvalidRequest only when the body cannot be read
    at all (the gateway's ``options`` is not an object, or names an option no row has)."""
    values: Values = {}
    errors: dict = {}
    options = None
    for row in rows(dialect):
        source = body
        if not row.top and dialect == GATEWAY:
            if options is None:
                options = _options(body, errors)
            source = options
        where = wire_name(row, dialect)
        site = Site(settings, source)
        try:
            values[row.name] = _check(row, dialect, _at(source, row.key(dialect)), where, site)
        except InvalidRequest as e:
            errors[row.name] = e
    if dialect in STRICT:
        unknown = sorted(k for k in body if k not in _HEADS[dialect])
        if unknown:
            errors.setdefault("", InvalidRequest(f"unknown parameter '{quote(unknown[0])}'", param=unknown[0][:64]))
    error = next(iter(errors.values()), None)
    if error is None:
        try:
            for dialects, rule in RULES:
                if dialect in dialects:
                    rule(values, dialect)
        except InvalidRequest as e:
            error = e
    return Reading(dialect, body, Site(settings, body), values, errors, error)


def _at(source: dict, key: str):
    """The value at ``key`` (``text.format``: a member of an object; absent when its parent is not one)."""
    head, _, rest = key.partition(".")
    value = source.get(head)
    return value if not rest else _at(value, rest) if isinstance(value, dict) else None


def parse(body: dict, dialect: str, settings: Settings, relay: bool = False) -> tuple[Ask, Render]:
    """``body`` checked once (``read``), in the view its model needs: the local view, or with ``relay`` (a model
    behind an upstream) the relay view. Raises InvalidRequest naming ``param``."""
    reading = read(body, dialect, settings)
    return reading.for_upstream() if relay else reading.for_local()


def _options(body: dict, errors: dict) -> dict:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _first(errors, InvalidRequest("'options' must be an object", param="options"))
    unknown = sorted(k for k in options if k not in _NAMES[GATEWAY])
    if unknown:
        raise _first(errors, InvalidRequest(f"unknown option 'options.{quote(unknown[0])}'",
                                            param=f"options.{unknown[0]}"))
    return options


def _first(errors: dict, e: InvalidRequest) -> InvalidRequest:
    return next(iter(errors.values()), e)


def _check(row: Field, dialect: str, value, where: str, site: Site):
    if value is None and not (row.check.required or row.check.always):
        return None
    out = row.check(value, where, site)
    accepted = row.accepted(dialect)
    if accepted is not None and out not in accepted and value not in accepted:
        raise InvalidRequest(row.refused.format(p=where), param=where)
    return out


def _build(dialect: str, values: Values, settings: Settings) -> tuple[Ask, Render]:
    ask: dict = {}
    sampling: dict = {}
    render: dict = {}
    for row in rows(dialect):
        value = values.get(row.name)
        if row.to is None or value is None:
            continue
        head, _, attr = row.to.partition(".")
        into = {"sampling": sampling, "render": render}.get(head, ask)
        into.setdefault(attr or head, value)      # the first row given wins
        if row.fit:
            ask["fit"] = True
    if dialect == COMPLETIONS:
        if "top_logprobs" in sampling:            # legacy logprobs: how many alternatives, and logprobs on
            sampling["logprobs"] = True
        sampling.setdefault("max_tokens", min(DEFAULT_COMPLETION_TOKENS, settings.max_tokens_cap))
    ask.setdefault("messages", ())
    return Ask(**ask, sampling=SamplingParams(**sampling)), Render(**render)
