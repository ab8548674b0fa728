"""Every request field of every dialect, in one table: how it is checked, where it goes in the ``Ask`` (or that it
is accepted with no effect), which dialects have it, the values accepted when only some are, the 400 text for the
others, and what a model behind an upstream does with it. A few rules across fields sit below the table.

``read(body, dialect, settings)`` checks a body against the table once; ``parse`` (the handler's one call) then
takes the local view (``for_local``: every field honoured or refused) or, when the model named is behind an
upstream, the relay view (``for_upstream``: reverb checks only what it needs and passes the client's fields on).
The OpenAPI document's request schemas (openapi.py) and the docs' field table (fieldtable.py, checked by
``make lint``) are generated from the same rows, so code, document and docs agree by construction.

Nothing is silently ignored: a field a dialect cannot honour is refused with 400 naming it, unless its value asks
for nothing (``store: false``). Fields no row names are accepted and unused in the OpenAI dialects (``top_k`` and
``min_p`` are rows); the gateway refuses an option it does not know. A new dialect is a name in ``DIALECTS``, its
rows' ``dialects`` (``names`` where it spells a field differently, ``only`` where it accepts fewer values) and a
renderer pair (``handler.py``); values land in the same Ask whatever the dialect calls them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Mapping

from ..errors import InvalidRequest, quote
from ..request import Ask
from ..settings import Settings
from ..types import SamplingParams
from .checks import (PARALLEL_TOOL_CALLS, TOOL_CHOICE, Boolean, Check, Integer, KeepAlive, LogitBias, Metadata, Model,
                     Number, OneOf, Prediction, ReasoningEffort, ResponseFormatCheck, Site, Stop, StreamOptions, Text,
                     Texts, ToolsCheck)
from .conversation import Messages, RelayMessages
from .items import (RESPONSES_TOOL_CHOICE, Include, Input, Reasoning, ResponsesTools, TextFormat, TextOptions,
                    Whatever)

CHAT, COMPLETIONS, EMBEDDINGS, GATEWAY, RESPONSES = "chat", "completions", "embeddings", "gateway", "responses"
DIALECTS = (CHAT, COMPLETIONS, EMBEDDINGS, GATEWAY, RESPONSES)
STRICT = (RESPONSES,)           # dialects that refuse a top-level field no row names
OPTIONS = "options."            # where the gateway reads every field but model and messages
MAX_N = 128                     # the backend refuses n above its slots
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5     # OpenAI's limit for the legacy endpoint
MAX_PROMPTS = 32                # /v1/completions: one queued job each
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for the legacy endpoint


def _cap(settings: Settings) -> int:
    return settings.max_tokens_cap


def _inputs(settings: Settings) -> int:
    return settings.max_embedding_inputs


def _chars(settings: Settings) -> int:
    return settings.max_message_chars


@dataclass(frozen=True)
class Field:
    name: str
    check: Check
    to: str | None                # "model", "messages", "prompt", "stream", "keep_alive", "response_format", "tools",
    #                               "thinking", "sampling.<attr>" or "render.<attr>"; None: accepted with no effect
    dialects: frozenset[str]
    doc: str                      # what reverb does with it: the docs' field table
    allowed: tuple | None = None  # when only some values are accepted: those (absent and null always are)
    refused: str = ""             # the 400 text for any other value; {p} is the field's name on the wire
    only: Mapping[str, tuple] = field(default_factory=dict)   # per dialect: the values accepted there
    fallback: bool = False        # a local model standing in for an upstream one serves it
    relay: Check | bool = False   # behind an upstream: True, checked as here; a Check, that one; False, unchecked
    top: bool = False             # read at the top of the body in every dialect (never under options.)
    names: Mapping[str, str] = field(default_factory=dict)   # per dialect: its own name for the field, when it
    #                               spells it differently (e.g. a Messages dialect's stop_sequences for stop)

    def accepted(self, dialect: str) -> tuple | None:
        return self.only.get(dialect, self.allowed)

    def key(self, dialect: str) -> str:
        """The field's name on the dialect's wire."""
        return self.names.get(dialect, self.name)


def _d(*names: str) -> frozenset[str]:
    return frozenset(names)


OPENAI = _d(CHAT, COMPLETIONS, EMBEDDINGS)
OPENAI_ALL = OPENAI | {RESPONSES}
GENERATE = _d(CHAT, COMPLETIONS, GATEWAY)
GENERATE_ALL = GENERATE | {RESPONSES}
CHATS = _d(CHAT, GATEWAY)
NOTHING = ()

# The order is the order of the checks: the first failing row names the 400.
FIELDS: tuple[Field, ...] = (
    # Fields only an OpenAI feature we do not have would use: accepted when their value asks for nothing.
    Field("audio", Check(), None, _d(CHAT), "400: the models here write text", NOTHING,
          "'{p}': audio output is not supported: the models here write text"),
    Field("modalities", Check(), None, _d(CHAT), '`["text"]` accepted; anything asking for audio is 400',
          (["text"],), "'{p}': only the 'text' output modality is supported"),
    Field("web_search_options", Check(), None, _d(CHAT), "400: web search is not supported", NOTHING,
          "'{p}': web search is not supported"),
    Field("functions", Check(), None, _d(CHAT), "400 (deprecated): use `tools`", NOTHING,
          "'{p}': 'functions' is deprecated and not supported; use 'tools'"),
    Field("function_call", Check(), None, _d(CHAT), "400 (deprecated): use `tool_choice`", NOTHING,
          "'{p}': 'function_call' is deprecated and not supported; use 'tool_choice'"),
    Field("verbosity", Check(), None, _d(CHAT), "`medium` (the default) accepted; `low`, `high` are 400",
          ("medium",), "'{p}': only the default verbosity ('medium') is supported"),
    Field("service_tier", Check(), None, _d(CHAT, RESPONSES),
          "`auto` and `default` accepted (there is one tier); `flex`, `priority`, `scale` are 400",
          ("auto", "default"), "'{p}': only the 'default' service tier is served"),
    Field("store", Check(), None, _d(CHAT), "`false` accepted; `true` is 400: nothing is stored for later retrieval",
          (False,), "'{p}': stored completions are not supported (nothing is kept for later retrieval)"),
    Field("echo", Check(), None, _d(COMPLETIONS), "`false` accepted; `true` is 400", (False,),
          "'{p}': 'echo' is not supported"),
    Field("suffix", Check(), None, _d(COMPLETIONS), 'empty accepted; anything else is 400 (no insertion)', ("",),
          "'{p}': 'suffix' (insertion) is not supported"),
    Field("dimensions", Check(), None, _d(EMBEDDINGS), "400: this model's embeddings have a fixed size", NOTHING,
          "'{p}': this model's embeddings have a fixed size; 'dimensions' is not supported"),
    # Accepted with no effect: the API key names the caller, prompt prefixes are reused automatically.
    Field("user", Text(), None, OPENAI_ALL, "accepted (at most 256 characters) with no effect: the API key names the "
          "caller", fallback=True),
    Field("safety_identifier", Text(), None, OPENAI_ALL, "accepted (at most 256 characters) with no effect"),
    Field("prompt_cache_key", Text(), None, OPENAI_ALL,
          "accepted (at most 256 characters) with no effect: prompt prefixes are reused automatically"),
    Field("metadata", Metadata(), None, OPENAI_ALL, "accepted (at most 16 string pairs) with no effect; kept only "
          "inside the stored body with `--log-bodies`"),
    # What is asked.
    Field("model", Model(), "model", frozenset(DIALECTS), "a model this server serves (loaded, or with "
          "`--on-demand` loaded for this request; docs/models.md); anything else is 404 `model_not_found` (never "
          "another model)", fallback=True, relay=True, top=True),
    Field("keep_alive", KeepAlive(), "keep_alive", OPENAI_ALL, "not OpenAI's (Ollama's): with `--on-demand`, how long "
          "the model stays loaded after this request: seconds or a duration (`\"10m\"`); 0 unloads it right after, "
          "negative keeps it (docs/models.md)", fallback=True),
    Field("messages", Messages(), "messages", CHATS, "roles `system`, `developer` (as system), `user`, `assistant` "
          "(`content` may be null when it has `tool_calls`), `tool` (needs `tool_call_id`), rendered by the model's "
          "chat template; `name` and an assistant's `reasoning_content` are handed to the template. Content parts: "
          "text only; an assistant's `audio` or `function_call` is 400", fallback=True, relay=RelayMessages(),
          top=True),
    Field("prompt", Texts(MAX_PROMPTS), "prompt", _d(COMPLETIONS), "a string or up to 32 strings, no chat template "
          "(choices of prompt *p* are indexed *p*·n + *i*); token arrays are 400"),
    Field("input", Texts(_inputs, nonempty=True), "prompt", _d(EMBEDDINGS),
          "a string or up to `--max-embedding-inputs` (256) non-empty strings, one unit-length vector each; token "
          "arrays are 400; the tokens of one request are bounded too (docs/limits.md)"),
    Field("reasoning_effort", ReasoningEffort(), "thinking", _d(CHAT), "for a model whose template thinks: `none` "
          "and `minimal` switch its thinking off (`enable_thinking`), other efforts leave it on; no effect for a "
          "model that does not think (docs/reasoning.md)", fallback=True),
    Field("n", Integer(1, MAX_N), "sampling.n", GENERATE, "choices per prompt, up to `--parallel` (for a key of "
          "the ledger, up to `--slots-per-key`: by default `--parallel` - 1; see docs/limits.md; 400 beyond): the "
          "prompt is read once and its KV copied to each choice; choice *i* samples with `seed + i`. The gateway "
          "answers one", only={GATEWAY: (1,)}, refused="'{p}' must be 1", fallback=True, relay=True),
    Field("best_of", Integer(1, MAX_N), None, _d(COMPLETIONS), "accepted only equal to `n` (every choice is "
          "returned)", refused="'{p}' is supported only equal to 'n' (every choice is returned)"),
    Field("logprobs", Boolean(), "sampling.logprobs", CHATS, "each token's log probability (the log-softmax of the "
          "raw logits, before `logit_bias`, penalties or a grammar), streamed and not. Gateway: no stream"),
    Field("logprobs", Integer(0, MAX_COMPLETION_LOGPROBS), "sampling.top_logprobs", _d(COMPLETIONS),
          "0-5 alternatives per token, in the legacy shape"),
    Field("top_logprobs", Integer(0, MAX_TOP_LOGPROBS), "sampling.top_logprobs", CHATS,
          "0-20 alternatives per token; needs `logprobs: true`"),
    # Sampling. Where two rows go to one place, the first given wins: max_completion_tokens over max_tokens.
    Field("max_completion_tokens", Integer(1, _cap), "sampling.max_tokens", GENERATE, "up to `--max-tokens-cap`; "
          "prompt + it must fit the context. Wins over `max_tokens`", fallback=True, relay=True),
    Field("max_tokens", Integer(1, _cap), "sampling.max_tokens", GENERATE_ALL, "as "
          "`max_completion_tokens`; completions default to 16. Responses: `max_output_tokens`", fallback=True,
          relay=True, names={RESPONSES: "max_output_tokens"}),
    Field("temperature", Number(0.0, 2.0), "sampling.temperature", GENERATE_ALL, "0-2; 0 is greedy", fallback=True),
    Field("top_p", Number(0.0, 1.0), "sampling.top_p", GENERATE_ALL, "0-1", fallback=True),
    Field("top_k", Integer(0, 1_000_000), "sampling.top_k", GENERATE, "not OpenAI's; 0 is off", fallback=True),
    Field("min_p", Number(0.0, 1.0), "sampling.min_p", GENERATE, "not OpenAI's; 0 is off", fallback=True),
    Field("seed", Integer(-(2 ** 63), 2 ** 64 - 1), "sampling.seed", GENERATE, "the same seed gives the same "
          "answer (see `--deterministic`)", fallback=True),
    Field("presence_penalty", Number(-2.0, 2.0), "sampling.presence_penalty", GENERATE, "-2 to 2", fallback=True),
    Field("frequency_penalty", Number(-2.0, 2.0), "sampling.frequency_penalty", GENERATE, "-2 to 2", fallback=True),
    Field("stop", Stop(), "sampling.stop", GENERATE, "up to 4 strings of at most 256 characters", fallback=True),
    Field("logit_bias", LogitBias(), "sampling.logit_bias", GENERATE, "up to 1024 token ids, -100 to 100; -100 "
          "bans the token", fallback=True),
    # How the answer is sent.
    Field("stream", Boolean(), "stream", GENERATE_ALL, "SSE events; the gateway sends plain text chunks and no final "
          "JSON", fallback=True, relay=True),
    Field("stream_options", StreamOptions(), "render.include_usage", _d(CHAT, COMPLETIONS),
          "`include_usage` honoured; `include_obfuscation` accepted and no padding is added: use TLS",
          fallback=True, relay=StreamOptions(obfuscation=False)),
    Field("stats", Boolean(), "render.stats", _d(GATEWAY), "default true; false leaves out `tokens_input`, "
          "`tokens_output` and `price`"),
    Field("encoding_format", OneOf(("float", "base64")), "render.encoding_format", _d(EMBEDDINGS),
          "`float` or `base64` (little-endian float32)"),
    # Constraints on the answer.
    Field("response_format", ResponseFormatCheck(), "response_format", CHATS, "`text`, `json_object`, "
          "`json_schema` (`strict` true or false, enforced alike) by a grammar with bounded work "
          "(docs/structured-output.md); a schema keyword that cannot be enforced is 400 naming it"),
    Field("prediction", Prediction(), "prediction", _d(CHAT), "Predicted Outputs: `{\"type\": \"content\", "
          "\"content\": ...}` (a string or text parts), the answer you expect (a file you ask to edit): its tokens are "
          "checked in batches against what the model samples, so the answer is the same, sooner; "
          "`usage.completion_tokens_details` counts accepted and rejected prediction tokens, and rejected ones are "
          "billed as completion tokens. With `n` > 1 it is 400 (docs/predicted-outputs.md)", fallback=True),
    Field("tools", ToolsCheck(), "tools", CHATS, "functions the model may call, for every model (see Tool calls)"),
    Field("tool_choice", TOOL_CHOICE, None, CHATS, "`none`, `auto`, `required` or a named function (read with "
          "`tools`)"),
    Field("parallel_tool_calls", PARALLEL_TOOL_CALLS, None, _d(CHAT, GATEWAY, RESPONSES),
          "false: at most one call (read with `tools`)"),
    # The Responses API (api/responses.py, docs/responses.md): its own spellings land in the same Ask.
    Field("instructions", Text(_chars), None, _d(RESPONSES), "a system message before `input` (read with `input`; "
          "not carried over by `previous_response_id`, as OpenAI)"),
    Field("input", Input(), "messages", _d(RESPONSES), "a string (one user message) or items: `message` (roles "
          "`user`, `system`, `developer` (as system), `assistant`; content a string or `input_text` / "
          "`output_text` parts), `function_call`, `function_call_output`; `reasoning` items are accepted and not "
          "shown to the model; images, files, audio and other item types are 400 naming them", top=True),
    Field("previous_response_id", Text(64), None, _d(RESPONSES), "continue a stored response of the same key "
          "(its input and output come before `input`); another key's id, an expired or deleted one is 404"),
    Field("store", Boolean(), None, _d(RESPONSES), "default true: the response is kept for `GET "
          "/v1/responses/{id}` and `previous_response_id` (`--responses-ttl`, size cap; docs/responses.md)"),
    Field("text", TextOptions(), None, _d(RESPONSES), "an object of `format` and `verbosity` (`medium`, the "
          "default, only; read with `text.format`)"),
    Field("response_format", TextFormat(), "response_format", _d(RESPONSES), "`text`, `json_object`, "
          "`json_schema` (flat: `name`, `schema`, `strict`), enforced as chat's `response_format`",
          names={RESPONSES: "text.format"}),
    Field("tools", ResponsesTools(), "tools", _d(RESPONSES), "flat function tools (`name`, `description`, "
          "`parameters`, `strict`) offered as in chat; hosted tools (`web_search`, `file_search`, "
          "`code_interpreter`, `custom`, ...) are not offered and are listed in `reverb_omitted_tools`"),
    Field("tool_choice", RESPONSES_TOOL_CHOICE, None, _d(RESPONSES), "`none`, `auto`, `required` or "
          "`{\"type\": \"function\", \"name\": ...}` (read with `tools`)"),
    Field("reasoning", Reasoning(), None, _d(RESPONSES), "accepted (an object) with no effect here"),
    Field("include", Include(), None, _d(RESPONSES), "accepted (an array of strings) with no effect: nothing "
          "encrypted or hosted is produced"),
    Field("client_metadata", Whatever(), None, _d(RESPONSES), "accepted (Codex's) with no effect"),
    Field("truncation", Check(), None, _d(RESPONSES), "`disabled` (the default) only: an input longer than the "
          "context is 400 `context_length_exceeded`", ("disabled",), "'{p}': only 'disabled' is supported"),
    Field("background", Check(), None, _d(RESPONSES), "`false` only: every response runs while its request is "
          "open", (False,), "'{p}': background responses are not supported"),
)


def rows(dialect: str) -> tuple[Field, ...]:
    return _ROWS[dialect]


_ROWS = {d: tuple(f for f in FIELDS if d in f.dialects) for d in DIALECTS}
_NAMES = {d: {f.key(d) for f in _ROWS[d]} for d in DIALECTS}
_HEADS = {d: {n.split(".")[0] for n in _NAMES[d]} for d in DIALECTS}


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
    its options under ``options.``; Responses spells a few differently (``RENAMES``)."""
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

    def for_upstream(self) -> tuple[Ask, Render]:
        """The request for a model behind an OpenAI-compatible upstream: the client's fields go upstream
        unchanged (``Ask.extra``); reverb checks only what it needs (the relay rows: the model, the messages'
        shape and size, max_tokens for the credit hold, n). ``Ask.local`` says whether a local model may stand
        in (a fallback): only for a request that passes the local checks, uses only rows marked ``fallback``
        and asks for one choice (a local job's choices are separate streams, which the relay does not render).
        """
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
    if dialect == COMPLETIONS:
        if "top_logprobs" in sampling:            # legacy logprobs: how many alternatives, and logprobs on
            sampling["logprobs"] = True
        sampling.setdefault("max_tokens", min(DEFAULT_COMPLETION_TOKENS, settings.max_tokens_cap))
    ask.setdefault("messages", ())
    return Ask(**ask, sampling=SamplingParams(**sampling)), Render(**render)
