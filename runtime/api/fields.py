"""Every request field of every dialect, in one table: how it is checked, where it goes in the ``Ask`` (or that it
is accepted with no effect), which dialects have it, the values accepted when only some are, the 400 text for the
others, and what a model behind an upstream does with it. "Where is ``n`` handled?": its row here.

wire.py reads a body against these rows (and the few rules across fields beside them); the OpenAPI document's
request schemas (openapi.py) and the docs' field table (fieldtable.py, checked by ``make lint``) are generated from
the same rows, so code, document and docs agree by construction.

Nothing is silently ignored: a field a dialect cannot honour is refused with 400 naming it, unless its value asks
for nothing (``store: false``). Fields no row names are accepted and unused in chat, completions and embeddings
(``top_k`` and ``min_p`` are rows); Responses and Messages refuse them (``STRICT``), as OpenAI and Anthropic do;
the gateway refuses an option it does not know. A new dialect is a name in ``DIALECTS``, its rows' ``dialects``
(``names`` where it spells a field differently, ``only`` where it accepts fewer values) and a renderer pair
(``handler.py``); values land in the same Ask whatever the dialect calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..settings import Settings
from .checks import (PARALLEL_TOOL_CALLS, TOOL_CHOICE, AnObject, Boolean, Check, Integer, KeepAlive, LogitBias,
                     Metadata, Model, Number, OneOf, Prediction, ReasoningEffort, ResponseFormatCheck, Stop,
                     StreamOptions, Text, Texts, ToolsCheck)
from .blocks import TOOL_CHOICE as MESSAGES_TOOL_CHOICE
from .blocks import AnthropicTools, Conversation, MaxTokens, OutputConfig, System, Thinking
from .conversation import Messages, RelayMessages
from .items import (RESPONSES_TOOL_CHOICE, Include, Input, ResponsesTools, TextFormat, TextOptions,
                    Whatever)

CHAT, COMPLETIONS, EMBEDDINGS, GATEWAY, RESPONSES = "chat", "completions", "embeddings", "gateway", "responses"
MESSAGES = "messages"           # Anthropic's Messages API (/v1/messages; docs/anthropic.md)
DIALECTS = (CHAT, COMPLETIONS, EMBEDDINGS, GATEWAY, RESPONSES, MESSAGES)
STRICT = (RESPONSES, MESSAGES)  # dialects that refuse a top-level field no row names (as OpenAI and Anthropic do)
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
    fit: bool = False             # a ceiling: above what the context leaves, lowered to fit (Ask.fit)

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
    Field("web_search_options", Check(), None, _d(CHAT), "400: web search is not supported", NOTHING,
          "'{p}': web search is not supported"),
    Field("functions", Check(), None, _d(CHAT), "400 (deprecated): use `tools`", NOTHING,
          "'{p}': 'functions' is deprecated and not supported; use 'tools'"),
    Field("function_call", Check(), None, _d(CHAT), "400 (deprecated): use `tool_choice`", NOTHING,
          "'{p}': 'function_call' is deprecated and not supported; use 'tool_choice'"),
    Field("verbosity", Check(), None, _d(CHAT), "`medium` (the default) accepted; `low`, `high` are 400",
          ("medium",), "'{p}': only the default verbosity ('medium') is supported"),
    Field("service_tier", Check(), None, _d(CHAT, RESPONSES, MESSAGES),
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
    Field("user", Text(), None, OPENAI_ALL, "accepted (at most 256 characters) with no effect: the API key names the "
          "caller", fallback=True),
    Field("safety_identifier", Text(), None, OPENAI_ALL, "accepted (at most 256 characters) with no effect"),
    Field("prompt_cache_key", Text(), None, OPENAI_ALL,
          "accepted (at most 256 characters) with no effect: prompt prefixes are reused automatically"),
    Field("metadata", Metadata(), None, OPENAI_ALL | ANTHROPIC, "accepted (at most 16 string pairs) with no "
          "effect; kept only inside the stored body with `--log-bodies`"),
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
    Field("reasoning_effort", ReasoningEffort(), "thinking", _d(CHAT, RESPONSES), "for a model whose template "
          "thinks: `none` and `minimal` switch its thinking off (`enable_thinking`), other efforts leave it on; no "
          "effect for a model that does not think (docs/reasoning.md). Responses: `reasoning.effort`", fallback=True,
          names={RESPONSES: "reasoning.effort"}),
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
    Field("max_tokens", MaxTokens(), "sampling.max_tokens", ANTHROPIC, "required; a ceiling: above "
          "`--max-tokens-cap` or what the context leaves after the prompt it is lowered to fit (the credit hold "
          "uses the lowered value)", fit=True),
    Field("temperature", Number(0.0, 2.0), "sampling.temperature", GENERATE_ALL | ANTHROPIC, "0-2; 0 is greedy",
          fallback=True),
    Field("top_p", Number(0.0, 1.0), "sampling.top_p", GENERATE_ALL | ANTHROPIC, "0-1", fallback=True),
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
    Field("stream", Boolean(), "stream", GENERATE_ALL | ANTHROPIC, "SSE events; the gateway sends plain text "
          "chunks and no final "
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
    Field("prediction", Prediction(), "prediction", _d(CHAT, RESPONSES), "Predicted Outputs: `{\"type\": \"content\", "
          "\"content\": ...}` (a string or text parts), the answer you expect (a file you ask to edit): its tokens are "
          "checked in batches against what the model samples, so the answer is the same, sooner; "
          "`usage.completion_tokens_details` counts accepted and rejected prediction tokens, and rejected ones are "
          "billed as completion tokens (the Responses API: in `usage.output_tokens_details`). With `n` > 1 it is 400 "
          "(docs/predicted-outputs.md)", fallback=True),
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
    Field("reasoning", AnObject(), None, _d(RESPONSES), "an object: `effort` as chat's `reasoning_effort` (its "
          "row), `summary` accepted with no effect"),
    Field("include", Include(), None, _d(RESPONSES), "accepted (an array of strings) with no effect: nothing "
          "encrypted or hosted is produced"),
    Field("client_metadata", Whatever(), None, _d(RESPONSES), "accepted (Codex's) with no effect"),
    Field("truncation", Check(), None, _d(RESPONSES), "`disabled` (the default) only: an input longer than the "
          "context is 400 `context_length_exceeded`", ("disabled",), "'{p}': only 'disabled' is supported"),
    Field("background", Check(), None, _d(RESPONSES), "`false` only: every response runs while its request is "
          "open", (False,), "'{p}': background responses are not supported"),
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
_HEADS = {d: {n.split(".")[0] for n in _NAMES[d]} for d in DIALECTS}
