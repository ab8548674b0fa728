"""The OpenAI request fields beyond sampling: which we honour, which we accept as having no effect here, which we
refuse, and the shape checks of the ones we honour (response_format, tools, logprobs, n).

Nothing is silently ignored: a field we cannot honour is refused with 400 naming it, unless its value asks for
nothing (``store: false``, ``modalities: ["text"]``, ``service_tier: "auto"``). Fields that are not OpenAI's
(``top_k``, ``min_p``, ...) are accepted. The README's field table says the same as these tables.
"""

from __future__ import annotations

import re

from .. import grammar
from ..errors import InvalidRequest
from ..types import Tools
from . import params as P

# field -> (values that ask for nothing here and are accepted, why anything else is refused)
CHAT_REFUSED: dict[str, tuple[tuple, str]] = {
    "audio": ((None,), "audio output is not supported: the models here write text"),
    "modalities": ((None, ["text"]), "only the 'text' output modality is supported"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "web_search_options": ((None,), "web search is not supported"),
    "functions": ((None,), "'functions' is deprecated and not supported; use 'tools'"),
    "function_call": ((None,), "'function_call' is deprecated and not supported; use 'tool_choice'"),
    "reasoning_effort": ((None,), "the models here do not reason before answering"),
    "verbosity": ((None, "medium"), "only the default verbosity ('medium') is supported"),
    "service_tier": ((None, "auto", "default"), "only the 'default' service tier is served"),
    "store": ((None, False), "stored completions are not supported (nothing is kept for later retrieval)"),
}
COMPLETIONS_REFUSED: dict[str, tuple[tuple, str]] = {
    "echo": ((None, False), "'echo' is not supported"),
    "suffix": ((None, ""), "'suffix' (insertion) is not supported"),
}
EMBEDDINGS_REFUSED: dict[str, tuple[tuple, str]] = {
    "dimensions": ((None,), "this model's embeddings have a fixed size; 'dimensions' is not supported"),
}
MAX_N = 128                  # the backend refuses n above its slots
MAX_TOP_LOGPROBS = 20
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def refuse(body: dict, table: dict[str, tuple[tuple, str]], prefix: str = "") -> None:
    """400 naming the first field whose value we cannot honour."""
    for name, (fine, why) in table.items():
        if name in body and body[name] not in fine:
            raise InvalidRequest(f"'{prefix}{name}': {why}", param=prefix + name)


def accepted(body: dict, prefix: str = "") -> None:
    """Check the fields that are accepted but change nothing here (see the README's table) for their shape:
    ``user``, ``safety_identifier`` and ``prompt_cache_key`` (strings), ``metadata`` (string pairs)."""
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > P.MAX_ID_CHARS):
            raise InvalidRequest(f"'{prefix}{name}' must be a string of at most {P.MAX_ID_CHARS} characters",
                                 param=prefix + name)
    meta = body.get("metadata")
    if meta is not None and not (
            isinstance(meta, dict) and len(meta) <= MAX_METADATA
            and all(isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, str)
                    and len(v) <= MAX_METADATA_VALUE for k, v in meta.items())):
        raise InvalidRequest(f"'{prefix}metadata' must be an object of at most {MAX_METADATA} string values",
                             param=prefix + "metadata")


def n(body: dict, prefix: str = "") -> int:
    return P.integer(body, "n", 1, MAX_N, 1, param=prefix + "n")


def chat_logprobs(body: dict, prefix: str = "") -> tuple[bool, int]:
    """Chat's ``logprobs`` (bool) and ``top_logprobs`` (0-20, which needs logprobs)."""
    on = P.boolean(body, "logprobs", False, param=prefix + "logprobs")
    top = P.integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, None, param=prefix + "top_logprobs")
    if top is not None and not on:
        raise InvalidRequest(f"'{prefix}top_logprobs' needs 'logprobs': true", param=prefix + "top_logprobs")
    return on, top or 0


def response_format(body: dict, prefix: str = "") -> dict | None:
    """The shape of ``response_format``; None for text. The backend compiles the schema and refuses what it
    cannot enforce, naming the keyword."""
    p = prefix + "response_format"
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise InvalidRequest(f"'{p}' must be an object", param=p)
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise InvalidRequest(f"'{p}.type' must be 'text', 'json_object' or 'json_schema'", param=f"{p}.type")
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise InvalidRequest(f"'{p}.json_schema' must be an object", param=f"{p}.json_schema")
    if not isinstance(js.get("name"), str) or not _NAME.match(js["name"]):
        raise InvalidRequest(f"'{p}.json_schema.name' must match ^[a-zA-Z0-9_-]{{1,64}}$",
                             param=f"{p}.json_schema.name")
    if js.get("strict") is not None and not isinstance(js["strict"], bool):
        raise InvalidRequest(f"'{p}.json_schema.strict' must be a boolean", param=f"{p}.json_schema.strict")
    if js.get("description") is not None and not isinstance(js["description"], str):
        raise InvalidRequest(f"'{p}.json_schema.description' must be a string",
                             param=f"{p}.json_schema.description")
    if "schema" in js and not isinstance(js["schema"], dict):
        raise InvalidRequest(f"'{p}.json_schema.schema' must be a JSON Schema object", param=f"{p}.json_schema.schema")
    return {"type": "json_schema", "json_schema": js}


def tools(body: dict, prefix: str = "") -> Tools | None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``; None when there are no tools."""
    return grammar.parse_tools(body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls"),
                               prefix=prefix)
