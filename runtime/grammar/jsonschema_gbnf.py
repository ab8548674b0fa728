"""Convert a schema validated by ``schema_check`` into a llama.cpp GBNF grammar (pure Python).

Modelled on llama.cpp's common/json-schema-to-grammar.cpp, but it only ever sees the checked subset, so
every construct it emits is exact or tighter than the schema. Generated JSON: keys in declared order,
one space after ':' and ',' and none elsewhere (see SPACE), no exponents on bounded numbers.
"""
import json
import math
import re

from .disjoint import PY_TYPES, canon, check_disjoint
from ..errors import InvalidRequest
from .numeric import int_range, number_range
from .pattern import pattern_to_gbnf
from .schema_check import Checked, families

# Whitespace between JSON tokens: exactly one space after ':' and ',' and none inside brackets, as Python's
# json.dumps writes it (and as ``json_literal`` writes consts). One spelling per document, not "at most one space
# per gap" (llama.cpp's converter even allows a newline and indent per gap): then the grammar alone decides every
# key name and separator between two values, and grammar fast-forward (backends/llama/draft.py) decodes them as
# one run of forced tokens instead of stopping at each optional space. WS (an optional space) is for the text
# around a tool call, which the model writes before the grammar takes over (tools.py).
SPACE = '" "'
WS = '" "?'
CHAR = (r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] [0-9a-fA-F]{3}'
        r' | [dD] [0-7] [0-9a-fA-F]{2}))')  # \u escapes exclude surrogates: one char = one code point
PRIMITIVES = {
    "space": SPACE,
    "ws": WS,
    "char": CHAR,
    "string": r'"\"" char* "\""',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "integral-part": "[0] | [1-9] [0-9]{0,15}",
    "integer": '"-"? integral-part',
    "number": '"-"? integral-part ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" (string ":" space value ("," space string ":" space value)*)? "}"',
    "array": '"[" (value ("," space value)*)? "]"',
}
PRIM_DEPS = {"string": ["char"], "integer": ["integral-part"], "number": ["integral-part"],
             "value": ["object", "array", "string", "number", "boolean", "null"],
             "object": ["space", "string", "value"], "array": ["space", "value"]}
FORMATS = {
    # month-specific day ranges (Feb 29 left out) so every generated date is a real calendar date
    "date": r'[0-9]{4} "-" (("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
            r' | ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30")'
            r' | "02" "-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))',
    "time": r'([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})?'
            r' ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
    "uuid": ' "-" '.join(f"[0-9a-f]{{{n}}}" for n in (8, 4, 4, 4, 12)),
    "ipv4": ' "." '.join(["(" + int_range(0, 255) + ")"] * 4),
    # within RFC 5321 length limits, which also stops a small model rambling inside an address
    "email": r'[a-zA-Z0-9_+-]{1,32} ("." [a-zA-Z0-9_+-]{1,31})? "@" [a-zA-Z0-9] [a-zA-Z0-9-]{0,30}'
             r' ("." [a-zA-Z0-9] [a-zA-Z0-9-]{0,30}){1,3}',
}


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace(
        "\r", "\\r").replace("\t", "\\t") + '"'


def json_literal(value) -> str:
    return literal(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))


class GrammarBuilder:
    """Accumulates named GBNF rules; identical bodies share one rule."""

    def __init__(self):
        self.rules: dict[str, str] = {"root": ""}  # reserved: response_format.finish() writes it last
        self._by_body: dict[str, str] = {}
        self.paths: dict[str, str] = {}  # rule -> the schema path it enforces (to name a part that is too costly)

    def name(self, hint: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-")[:40] or "r"
        name, i = base, 0
        while name in self.rules or name in PRIMITIVES:
            i += 1
            name = f"{base}-{i}"
        self.rules[name] = ""  # reserve
        return name

    def add(self, hint: str, body: str) -> str:
        if body in self._by_body:
            return self._by_body[body]
        name = self.name(hint)
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def prim(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dep in PRIM_DEPS.get(name, []):
                self.prim(dep)
        return name

    def text(self) -> str:
        return "".join(f"{k} ::= {v}\n" for k, v in self.rules.items())


class SchemaConverter:
    """Adds the rules for one checked schema to a GrammarBuilder; ``convert`` returns its rule name."""

    def __init__(self, builder: GrammarBuilder, checked: Checked, prefix: str):
        self.b, self.checked, self.prefix = builder, checked, prefix
        self.refs: dict[str, str] = {}

    def convert(self, path: str) -> str:
        return self.visit(self.checked.root, self.prefix, path)

    def visit(self, node, hint: str, path: str) -> str:
        rule = self._visit(node, hint, path)
        self.b.paths.setdefault(rule, path)
        return rule

    def _visit(self, node, hint: str, path: str) -> str:
        if node is True or node == {} or not isinstance(node, dict):
            return self.b.prim("value")
        if "$ref" in node:
            return self.ref(node["$ref"], path)
        if "allOf" in node:
            return self.visit(node["allOf"][0], hint, f"{path}.allOf[0]")
        for key in ("anyOf", "oneOf"):
            if key in node:
                if key == "oneOf":
                    check_disjoint(node["oneOf"], self.checked.defs, f"{path}.oneOf")
                alts = [self.visit(s, f"{hint}-{i}", f"{path}.{key}[{i}]") for i, s in enumerate(node[key])]
                return self.b.add(hint, " | ".join(dict.fromkeys(alts)))
        if "enum" in node or "const" in node:
            return self.literals(node, hint, path)
        fams = families(node)
        if "number" in fams and "integer" in fams:
            fams.remove("integer")
        if len(fams) > 1:
            alts = [self.visit({**node, "type": t}, f"{hint}-{t}", path) for t in fams]
            return self.b.add(hint, " | ".join(alts))
        t = fams[0]
        if t == "object":
            return self.object(node, hint, path)
        if t == "array":
            return self.array(node, hint, path)
        if t == "string":
            return self.string(node, hint, path)
        if t in ("number", "integer"):
            return self.number(node, t, hint, path)
        return self.b.prim(t)

    def ref(self, ref: str, path: str) -> str:
        if ref not in self.refs:  # reserve the name first so recursive schemas refer back to it
            name = self.refs[ref] = self.b.name(f"{self.prefix}-ref-{ref.rsplit('/', 1)[-1]}")
            self.b.rules[name] = self.visit(self.checked.defs[ref], name, path)
        return self.refs[ref]

    def literals(self, node, hint, path) -> str:
        values = node["enum"] if "enum" in node else [node["const"]]
        if "const" in node:
            values = [v for v in values if canon(v) == canon(node["const"])]
        if "type" in node:
            ts = [node["type"]] if isinstance(node["type"], str) else node["type"]
            values = [v for v in values if any(PY_TYPES[t](v) for t in ts)]
        if not values:
            raise InvalidRequest("no value satisfies 'enum'/'const' together with 'type'", param=path)
        uniq = list(dict.fromkeys(json_literal(v) for v in values))
        return self.b.add(hint, " | ".join(uniq))

    def object(self, node, hint, path) -> str:
        props = node.get("properties", {})
        ap = node.get("additionalProperties", True)
        sp = self.b.prim("space")
        if not props:
            if ap is False:
                return self.b.add(hint, '"{" "}"')
            if ap is True or ap == {}:
                return self.b.prim("object")
            val = self.visit(ap, f"{hint}-value", f"{path}.additionalProperties")
            kv = self.b.add(f"{hint}-kv", f'{self.b.prim("string")} ":" {sp} {val}')
            return self.b.add(hint, f'"{{" ({kv} ("," {sp} {kv})*)? "}}"')
        # Declared properties only (extra ones are merely permitted): required always, optional maybe,
        # in declared order. Two rule chains keep the grammar linear in the number of properties (a nested
        # expression is quadratic and llama.cpp's parser refuses deep nesting): rest-i = properties i..
        # after something was written (each needs a comma); first-i = properties i.. with nothing yet.
        required = set(node.get("required", []))
        kvs = []
        for name, sub in props.items():
            val = self.visit(sub, f"{hint}-{name}", f"{path}.properties.{name}")
            kvs.append((name in required, self.b.add(f"{hint}-{name}-kv", f'{json_literal(name)} ":" {sp} {val}')))
        rest = ""
        firsts: list[str] = [""] * (len(kvs) + 1)
        for i in range(len(kvs) - 1, -1, -1):
            req, kv = kvs[i]
            here = f"{kv} {rest}".strip()
            if req:
                firsts[i] = here
            else:
                firsts[i] = f"{here} | {firsts[i + 1]}" if firsts[i + 1] else here
                if i and firsts[i + 1] and " | " in firsts[i]:
                    firsts[i] = self.b.add(f"{hint}-first-{i}", firsts[i])
            tail = f'"," {sp} {kv}' if req else f'("," {sp} {kv})?'
            rest = self.b.add(f"{hint}-rest-{i}", f"{tail} {rest}".strip()) if i else ""
        body = firsts[0]
        inner = f"({body})" if required else f"(({body}))?"
        return self.b.add(hint, f'"{{" {inner} "}}"')

    def array(self, node, hint, path) -> str:
        sp = self.b.prim("space")
        if "prefixItems" in node:
            items = [self.visit(s, f"{hint}-{i}", f"{path}.prefixItems[{i}]")
                     for i, s in enumerate(node["prefixItems"])]
            return self.b.add(hint, '"[" ' + f' "," {sp} '.join(items) + ' "]"')
        lo, hi = node.get("minItems", 0), node.get("maxItems")
        if node.get("items", True) is False or hi == 0:
            return self.b.add(hint, '"[" "]"')
        item = self.visit(node.get("items", True), f"{hint}-item", f"{path}.items")
        if hi == 1:
            body = item
        else:
            rep = "*" if hi is None and lo <= 1 else f"{{{max(lo - 1, 0)},{'' if hi is None else hi - 1}}}"
            body = f'{item} ("," {sp} {item}){rep}'
        return self.b.add(hint, '"[" ' + (f"({body})?" if lo == 0 else body) + ' "]"')

    def string(self, node, hint, path) -> str:
        if "pattern" in node:
            return self.b.add(hint, pattern_to_gbnf(node["pattern"], f"{path}.pattern"))
        fmt = node.get("format")
        if fmt == "date-time":
            body = f'{self.b.add("date", FORMATS["date"])} "T" {self.b.add("time", FORMATS["time"])}'
            return self.b.add(hint, r'"\"" ' + body + r' "\""')
        if fmt:
            return self.b.add(hint, r'"\"" ' + self.b.add(fmt, FORMATS[fmt]) + r' "\""')
        lo, hi = node.get("minLength", 0), node.get("maxLength")
        if lo == 0 and hi is None:
            return self.b.prim("string")
        self.b.prim("char")
        rep = f"{{{lo}}}" if lo == hi else f"{{{lo},{'' if hi is None else hi}}}"
        return self.b.add(hint, r'"\"" char' + rep + r' "\""')

    def number(self, node, t, hint, path) -> str:
        lo_key = "exclusiveMinimum" if "exclusiveMinimum" in node and node["exclusiveMinimum"] >= node.get(
            "minimum", float("-inf")) else "minimum"
        hi_key = "exclusiveMaximum" if "exclusiveMaximum" in node and node["exclusiveMaximum"] <= node.get(
            "maximum", float("inf")) else "maximum"
        lo, hi = node.get(lo_key), node.get(hi_key)
        if lo is None and hi is None:
            return self.b.prim(t)
        if t == "integer":
            ilo = None if lo is None else (math.floor(lo) + 1 if lo_key[0] == "e" else math.ceil(lo))
            ihi = None if hi is None else (math.ceil(hi) - 1 if hi_key[0] == "e" else math.floor(hi))
            body = int_range(ilo, ihi)
        else:
            body = number_range(lo, lo_key[0] == "e", hi, hi_key[0] == "e")
        if body is None:
            raise InvalidRequest(f"no {t} satisfies the bounds", param=f"{path}.{lo_key if lo is not None else hi_key}")
        return self.b.add(hint, body)
