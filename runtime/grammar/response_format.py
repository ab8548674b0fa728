"""A checked ``response_format`` (types.ResponseFormat) -> GrammarSpec."""
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..types import ResponseFormat
from .jsonschema_gbnf import GrammarBuilder, SchemaConverter
from .schema_check import check_schema

MAX_GRAMMAR_CHARS = 256_000  # llama.cpp parses the grammar per request; bound that work


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


def schema_rule(builder: GrammarBuilder, response_format: ResponseFormat | None,
                param: str = "response_format") -> str | None:
    """Rule name for the response's JSON value, or None for plain text. Raises InvalidRequest naming a schema
    keyword the grammar cannot enforce (the shape of response_format was checked where the request was read)."""
    if response_format is None:
        return None
    if response_format.schema is None:  # json_object, or json_schema without a schema: any JSON object
        return json_object_rule(builder)
    # strict true and false are both enforced exactly (or refused): a looser answer is never produced
    return add_schema(builder, response_format.schema, f"{param}.json_schema.schema", "root")


def response_format_grammar(response_format: ResponseFormat | None,
                            param: str = "response_format") -> GrammarSpec | None:
    """GrammarSpec forcing the reply to match ``response_format``; None for text/absent."""
    b = GrammarBuilder()
    rule = schema_rule(b, response_format, param)
    if rule is None:
        return None
    return finish(b, rule, param)
