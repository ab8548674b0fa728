"""Every request field of every dialect, in one table: how it is checked, where it goes in the ``Ask`` (or that it
is accepted with no effect), which dialects have it, the values accepted when only some are, the 400 text for the
others, and what a model behind an upstream does with it. A few rules across fields sit below the table.

``read(body, dialect, settings)`` checks a body against the table once; the handler then takes the local view
(``for_local``: every field honoured or refused) or, when the resolved model is behind an upstream, the relay view
(``for_upstream``: reverb checks only what it needs and passes the client's fields on). ``parse`` is the local
view in one call. The OpenAPI document's request schemas (openapi.py) and the docs' field table (fieldtable.py,
checked by ``make lint``) are generated from the same rows, so code, document and docs agree by construction.

Nothing is silently ignored: a field a dialect cannot honour is refused with 400 naming it, unless its value asks
for nothing (``store: false``). Fields no row names are accepted and unused in the OpenAI dialects (``top_k`` and
``min_p`` are rows); the gateway refuses an option it does not know. A new dialect is a name in ``DIALECTS``, its
rows' ``dialects`` (``names`` where it spells a field differently, ``only`` where it accepts fewer values) and a
renderer pair (``handler.py``); values land in the same Ask whatever the dialect calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Mapping

from ..errors import InvalidRequest, quote
from ..request import Ask
from ..settings import Settings
from ..types import SamplingParams
from . import blocks, chatbody
from .checks import (PARALLEL_TOOL_CALLS, TOOL_CHOICE, Boolean, Check, Integer, KeepAlive, LogitBias, Metadata, Model,
                     Number, OneOf, ResponseFormatCheck, Site, Stop, StreamOptions, Text, Texts, ToolsCheck)
from .blocks import TOOL_CHOICE as MESSAGES_TOOL_CHOICE
from .blocks import AnObject, AnthropicTools, Conversation, MaxTokens, OutputConfig, System, Thinking
from .conversation import Messages, RelayMessages

CHAT, COMPLETIONS, EMBEDDINGS, GATEWAY = "chat", "completions", "embeddings", "gateway"
MESSAGES = "messages"           # Anthropic's Messages API (/v1/messages; docs/anthropic.md)
DIALECTS = (CHAT, COMPLETIONS, EMBEDDINGS, GATEWAY, MESSAGES)
STRICT = (MESSAGES,)            # a field no row names is 400 (as Anthropic answers it), not accepted and unused
TRANSLATED = (MESSAGES,)        # behind an upstream: the checked Ask, sent as a chat completions body (chatbody.py)
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


@dataclass(frozen=True)
class Field:
    name: str
    check: Check
    to: str | None                # "model", "messages", "prompt", "stream", "keep_alive", "response_format", "tools",
    #                               "sampling.<attr>" or "render.<attr>"; None: accepted with no effect
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
    fit: bool = False             # a ceiling: above what the context leaves, lowered to fit (Ask.fit)

    def accepted(self, dialect: str) -> tuple | None:
        return self.only.get(dialect, self.allowed)

    def key(self, dialect: str) -> str:
        """The field's name on the dialect's wire."""
        return self.names.get(dialect, self.name)


def _d(*names: str) -> frozenset[str]:
    return frozenset(names)


OPENAI = _d(CHAT, COMPLETIONS, EMBEDDINGS)
GENERATE = _d(CHAT, COMPLETIONS, GATEWAY)
CHATS = _d(CHAT, GATEWAY)
ANTHROPIC = _d(MESSAGES)
SAMPLED = GENERATE | ANTHROPIC
NOTHING = ()

# The order is the order of the checks: the first failing row names the 400.
FIELDS: tuple[Field, ...] = (
    # Fields only an OpenAI feature we do not have would use: accepted when their value asks for nothing.
    Field("audio", Check(), None, _d(CHAT), "400: the models here write text", NOTHING,
          "'{p}': audio output is not supported: the models here write text"),
    Field("modalities", Check(), None, _d(CHAT), '`["text"]` accepted; anything asking for audio is 400',
          (["text"],), "'{p}': only the 'text' output modality is supported"),
    Field("prediction", Check(), None, _d(CHAT), "400: predicted outputs are not supported", NOTHING,
          "'{p}': predicted outputs are not supported"),
    Field("web_search_options", Check(), None, _d(CHAT), "400: web search is not supported", NOTHING,
          "'{p}': web search is not supported"),
    Field("functions", Check(), None, _d(CHAT), "400 (deprecated): use `tools`", NOTHING,
          "'{p}': 'functions' is deprecated and not supported; use 'tools'"),
    Field("function_call", Check(), None, _d(CHAT), "400 (deprecated): use `tool_choice`", NOTHING,
          "'{p}': 'function_call' is deprecated and not supported; use 'tool_choice'"),
    Field("reasoning_effort", Check(), None, _d(CHAT), "400: the models here do not reason before answering",
          NOTHING, "'{p}': the models here do not reason before answering"),
    Field("verbosity", Check(), None, _d(CHAT), "`medium` (the default) accepted; `low`, `high` are 400",
          ("medium",), "'{p}': only the default verbosity ('medium') is supported"),
    Field("service_tier", Check(), None, _d(CHAT, MESSAGES),
          "`auto` and `default` accepted (there is one tier); `flex`, `priority`, `scale` are 400. Messages: `auto`, "
          "`standard_only`", ("auto", "default"), "'{p}': only the 'default' service tier is served",
          only={MESSAGES: ("auto", "standard_only")}),
    Field("container", Check(), None, ANTHROPIC, "400: nothing here runs code or keeps containers", NOTHING,
          "'{p}': containers are not supported"),
    Field("mcp_servers", Check(), None, ANTHROPIC, "400: the server calls no MCP servers (the client may)", NOTHING,
          "'{p}': MCP servers are not supported; connect them in the client"),
    Field("store", Check(), None, _d(CHAT), "`false` accepted; `true` is 400: nothing is stored for later retrieval",
          (False,), "'{p}': stored completions are not supported (nothing is kept for later retrieval)"),
    Field("echo", Check(), None, _d(COMPLETIONS), "`false` accepted; `true` is 400", (False,),
          "'{p}': 'echo' is not supported"),
    Field("suffix", Check(), None, _d(COMPLETIONS), 'empty accepted; anything else is 400 (no insertion)', ("",),
          "'{p}': 'suffix' (insertion) is not supported"),
    Field("dimensions", Check(), None, _d(EMBEDDINGS), "400: this model's embeddings have a fixed size", NOTHING,
          "'{p}': this model's embeddings have a fixed size; 'dimensions' is not supported"),
    # Accepted with no effect: the API key names the caller, prompt prefixes are reused automatically.
    Field("user", Text(), None, OPENAI, "accepted (at most 256 characters) with no effect: the API key names the "
          "caller", fallback=True),
    Field("safety_identifier", Text(), None, OPENAI, "accepted (at most 256 characters) with no effect"),
    Field("prompt_cache_key", Text(), None, OPENAI,
          "accepted (at most 256 characters) with no effect: prompt prefixes are reused automatically"),
    Field("metadata", Metadata(), None, OPENAI | ANTHROPIC, "accepted (at most 16 string pairs) with no effect; "
          "kept only inside the stored body with `--log-bodies`"),
    # What is asked.
    Field("model", Model(), "model", frozenset(DIALECTS), "a model this server serves (loaded, or with "
          "`--on-demand` loaded for this request; docs/models.md); anything else is 404 `model_not_found` (never "
          "another model)", fallback=True, relay=True, top=True),
    Field("keep_alive", KeepAlive(), "keep_alive", OPENAI, "not OpenAI's (Ollama's): with `--on-demand`, how long "
          "the model stays loaded after this request: seconds or a duration (`\"10m\"`); 0 unloads it right after, "
          "negative keeps it (docs/models.md)", fallback=True),
    Field("messages", Messages(), "messages", CHATS, "roles `system`, `developer` (as system), `user`, `assistant` "
          "(`content` may be null when it has `tool_calls`), `tool` (needs `tool_call_id`), rendered by the model's "
          "chat template; `name` is handed to the template. Content parts: text only; an assistant's `audio` or "
          "`function_call` is 400", fallback=True, relay=RelayMessages(), top=True),
    Field("system", System(), None, ANTHROPIC, "a string or `text` blocks: the prompt's first (system) message",
          top=True),
    Field("messages", Conversation(), "messages", ANTHROPIC, "`user` and `assistant` turns: a string or blocks: "
          "`text`, `tool_use` (assistant), `tool_result` (user; text content), `thinking` (assistant, dropped "
          "from the prompt); `cache_control` accepted (prefixes are reused automatically); `image`, `document` and "
          "other blocks are 400 naming them", top=True),
    Field("prompt", Texts(MAX_PROMPTS), "prompt", _d(COMPLETIONS), "a string or up to 32 strings, no chat template "
          "(choices of prompt *p* are indexed *p*·n + *i*); token arrays are 400"),
    Field("input", Texts(_inputs, nonempty=True), "prompt", _d(EMBEDDINGS),
          "a string or up to `--max-embedding-inputs` (256) non-empty strings, one unit-length vector each; token "
          "arrays are 400; the tokens of one request are bounded too (docs/limits.md)"),
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
    Field("max_tokens", Integer(1, _cap), "sampling.max_tokens", GENERATE, "as `max_completion_tokens`; "
          "completions default to 16", fallback=True, relay=True),
    Field("max_tokens", MaxTokens(), "sampling.max_tokens", ANTHROPIC, "required; a ceiling: above "
          "`--max-tokens-cap` or what the context leaves after the prompt it is lowered to fit (the credit hold "
          "uses the lowered value)", fit=True),
    Field("temperature", Number(0.0, 2.0), "sampling.temperature", SAMPLED, "0-2; 0 is greedy", fallback=True),
    Field("top_p", Number(0.0, 1.0), "sampling.top_p", SAMPLED, "0-1", fallback=True),
    Field("top_k", Integer(0, 1_000_000), "sampling.top_k", SAMPLED, "not OpenAI's; 0 is off", fallback=True),
    Field("min_p", Number(0.0, 1.0), "sampling.min_p", GENERATE, "not OpenAI's; 0 is off", fallback=True),
    Field("seed", Integer(-(2 ** 63), 2 ** 64 - 1), "sampling.seed", GENERATE, "the same seed gives the same "
          "answer (see `--deterministic`)", fallback=True),
    Field("presence_penalty", Number(-2.0, 2.0), "sampling.presence_penalty", GENERATE, "-2 to 2", fallback=True),
    Field("frequency_penalty", Number(-2.0, 2.0), "sampling.frequency_penalty", GENERATE, "-2 to 2", fallback=True),
    Field("stop", Stop(), "sampling.stop", SAMPLED, "up to 4 strings of at most 256 characters "
          "(Messages: `stop_sequences`; the one that matched is `stop_sequence`)", fallback=True,
          names={MESSAGES: "stop_sequences"}),
    Field("logit_bias", LogitBias(), "sampling.logit_bias", GENERATE, "up to 1024 token ids, -100 to 100; -100 "
          "bans the token", fallback=True),
    # How the answer is sent.
    Field("stream", Boolean(), "stream", SAMPLED, "SSE events; the gateway sends plain text chunks and no final "
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
    Field("tools", ToolsCheck(), "tools", CHATS, "functions the model may call, for every model (see Tool calls)"),
    Field("tool_choice", TOOL_CHOICE, None, CHATS, "`none`, `auto`, `required` or a named function (read with "
          "`tools`)"),
    Field("parallel_tool_calls", PARALLEL_TOOL_CALLS, None, CHATS, "false: at most one call (read with `tools`)"),
    Field("tools", AnthropicTools(), "tools", ANTHROPIC, "custom tools (`name`, `description`, `input_schema`), "
          "enforced as chat's; server tools (another `type`) are 400"),
    Field("tool_choice", MESSAGES_TOOL_CHOICE, None, ANTHROPIC, "`auto`, `any` (must call one), `tool` (that one), "
          "`none`; `disable_parallel_tool_use` (read with `tools`)"),
    Field("thinking", Thinking(), "thinking", ANTHROPIC, "`disabled` turns a thinking template off, `enabled` / "
          "`adaptive` on (docs/anthropic.md); `budget_tokens` is part of max_tokens"),
    Field("output_config", OutputConfig(), "response_format", ANTHROPIC, "`format` (`json_schema`) enforced by the "
          "grammar; `effort` accepted with no effect"),
    Field("cache_control", AnObject(), None, ANTHROPIC, "accepted with no effect: prompt prefixes are reused "
          "automatically"),
    Field("inference_geo", Text(), None, ANTHROPIC, "accepted with no effect: everything runs on this server"),
    Field("context_management", AnObject(), None, ANTHROPIC, "accepted with no effect: the context is never "
          "edited (a request that does not fit is 400 `prompt is too long`)"),
)


def rows(dialect: str) -> tuple[Field, ...]:
    return _ROWS[dialect]


_ROWS = {d: tuple(f for f in FIELDS if d in f.dialects) for d in DIALECTS}
_NAMES = {d: {f.key(d) for f in _ROWS[d]} for d in DIALECTS}


def wire_name(row: Field, dialect: str) -> str:
    """Where the field sits in the dialect's body, as a param path."""
    return row.key(dialect) if row.top or dialect != GATEWAY else OPTIONS + row.key(dialect)


def wire_param(param: str | None, dialect: str) -> str | None:
    """A param named by its OpenAI name (as backends name them) under the dialect's own path: the gateway reads
    its options under ``options.``, Messages spells some fields its own way."""
    if param is not None and dialect in TRANSLATED:
        return blocks.wire_param(param)
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


RULES: tuple[tuple[frozenset[str], Callable[[Values, str], None]], ...] = (
    (CHATS, _top_logprobs_needs_logprobs),
    (_d(COMPLETIONS), _best_of_is_n),
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
            values[row.name] = _check(row, dialect, source.get(row.key(dialect)), where, site)
        except InvalidRequest as e:
            errors[row.name] = e
    if dialect in STRICT:
        unknown = sorted(k for k in body if k not in _NAMES[dialect])
        if unknown:
            errors.setdefault(unknown[0], InvalidRequest(f"'{quote(unknown[0])}': this field is not supported",
                                                         param=unknown[0]))
    error = next(iter(errors.values()), None)
    if error is None:
        try:
            for dialects, rule in RULES:
                if dialect in dialects:
                    rule(values, dialect)
        except InvalidRequest as e:
            error = e
    return Reading(dialect, body, Site(settings, body), values, errors, error)


def parse(body: dict, dialect: str, settings: Settings) -> tuple[Ask, Render]:
    """The local view of ``body`` in one call. Raises InvalidRequest naming ``param``."""
    return read(body, dialect, settings).for_local()


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
