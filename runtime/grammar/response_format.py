"""OpenAI ``response_format`` -> GrammarSpec."""
import re
from dataclasses import dataclass

from ..errors import InvalidRequest
from .jsonschema_gbnf import GrammarBuilder, SchemaConverter
from .schema_check import check_schema

MAX_GRAMMAR_CHARS = 256_000  # llama.cpp parses the grammar per request; bound that work
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class GrammarSpec:
    """What the engine hands to llama.cpp: GBNF text, its root rule and, when lazy, the trigger regexes
    (ECMAScript, for llama_sampler_init_grammar_lazy_patterns; the grammar is fed from the match start)."""
    grammar: str
    root: str = "root"
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = ()
    param: str = "response_format"
    paths: tuple[tuple[str, str], ...] = ()  # (rule, schema path): where a rule llguidance names came from


def finish(builder: GrammarBuilder, root_body: str, param: str, **kw) -> GrammarSpec:
    builder.rules = {"root": root_body, **{k: v for k, v in builder.rules.items() if k != "root"}}
    text = builder.text()
    if len(text) > MAX_GRAMMAR_CHARS:
        raise InvalidRequest(f"the schema needs a grammar larger than {MAX_GRAMMAR_CHARS} characters", param=param)
    return GrammarSpec(text, param=param, paths=tuple(builder.paths.items()), **kw)


def add_schema(builder: GrammarBuilder, schema, path: str, prefix: str) -> str:
    """Check ``schema`` and add its rules to ``builder``; return the rule name of its value."""
    return SchemaConverter(builder, check_schema(schema, path), prefix).convert(path)


def json_object_rule(builder: GrammarBuilder) -> str:
    return builder.prim("object")


def schema_rule(builder: GrammarBuilder, response_format, param="response_format") -> str | None:
    """Rule name for the response's JSON value, or None for plain text. Raises InvalidRequest."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest("'response_format' must be an object", param=param)
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_rule(builder)
    if kind != "json_schema":
        raise InvalidRequest("'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                             param=f"{param}.type")
    js = response_format.get("json_schema")
    if not isinstance(js, dict):
        raise InvalidRequest("'json_schema' must be an object", param=f"{param}.json_schema")
    if not isinstance(js.get("name"), str) or not _NAME_RE.match(js["name"]):
        raise InvalidRequest("'name' must match ^[a-zA-Z0-9_-]{1,64}$", param=f"{param}.json_schema.name")
    if not isinstance(js.get("strict", False), (bool, type(None))):
        raise InvalidRequest("'strict' must be a boolean", param=f"{param}.json_schema.strict")
    if "schema" not in js:  # OpenAI makes the schema optional: any JSON object then
        return json_object_rule(builder)
    # strict true and false are both enforced exactly (or refused): a looser answer is never produced
    return add_schema(builder, js["schema"], f"{param}.json_schema.schema", "root")


def response_format_grammar(response_format, param: str = "response_format") -> GrammarSpec | None:
    """GrammarSpec forcing the reply to match ``response_format``; None for text/absent."""
    b = GrammarBuilder()
    rule = schema_rule(b, response_format, param)
    if rule is None:
        return None
    return finish(b, rule, param)
