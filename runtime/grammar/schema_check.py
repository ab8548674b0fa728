"""Validate a JSON Schema against the subset we enforce exactly, before any grammar is built.

Every keyword is either enforced by ``jsonschema_gbnf`` (ENFORCED), ignored because it never constrains
values (ANNOTATIONS), or refused with a InvalidRequest naming it - never silently dropped.
"""
from dataclasses import dataclass, field
from urllib.parse import unquote

from ..errors import InvalidRequest, quote
from .numeric import LIMIT
from .pattern import pattern_to_gbnf

ANNOTATIONS = frozenset({
    "title", "description", "examples", "default", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "contentEncoding", "contentMediaType",
    # Not JSON Schema validation keywords; ignoring them can only make the output tighter.
    "discriminator", "nullable",
})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
FORMATS = frozenset({"date", "time", "date-time", "uuid", "ipv4", "email"})
OBJECT_KW = frozenset({"properties", "required", "additionalProperties"})
ARRAY_KW = frozenset({"items", "prefixItems", "minItems", "maxItems", "uniqueItems"})
STRING_KW = frozenset({"minLength", "maxLength", "pattern", "format"})
NUMBER_KW = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
COMBINATORS = ("$ref", "anyOf", "oneOf", "allOf")
CONTAINERS = frozenset({"$defs", "definitions"})
ENFORCED = frozenset({"type", "enum", "const", *COMBINATORS, *CONTAINERS,
                      *OBJECT_KW, *ARRAY_KW, *STRING_KW, *NUMBER_KW})

MAX_DEPTH = 32          # nesting of subschemas (bounds recursion in the walkers)
MAX_NODES = 2000        # subschemas visited, including referenced definitions
MAX_PROPERTIES = 100    # per object (each adds a few rules; bounds grammar size with MAX_NODES)
MAX_ENUM = 500
MAX_STRING_BOUND = 1000  # minLength/maxLength: llama.cpp expands x{m,n} into n rules
MAX_ITEMS_BOUND = 100    # minItems/maxItems


@dataclass
class Checked:
    """A validated schema: ``root`` plus the definitions reachable through ``$ref`` (keyed by ref)."""
    root: dict
    defs: dict = field(default_factory=dict)


def families(node: dict) -> list[str]:
    """The JSON types a node may produce: its ``type`` or, when absent, the families its keywords imply."""
    t = node.get("type")
    if t is not None:
        return [t] if isinstance(t, str) else list(t)
    fams = [f for f, kws in (("object", OBJECT_KW), ("array", ARRAY_KW), ("string", STRING_KW),
                             ("number", NUMBER_KW)) if kws & node.keys()]
    return fams or sorted(TYPES - {"integer"})


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Checker:
    def __init__(self, root, base: str):
        self.root, self.base, self.nodes = root, base, 0
        self.defs: dict[str, dict] = {}
        self.ref_paths: dict[str, str] = {}

    def fail(self, msg, path):
        raise InvalidRequest(msg, param=path)

    def resolve(self, ref, path) -> tuple[dict | bool, str]:
        if ref == "#":
            return self.root, self.base
        for box in CONTAINERS:
            prefix = f"#/{box}/"
            if isinstance(ref, str) and ref.startswith(prefix):
                name = unquote(ref[len(prefix):]).replace("~1", "/").replace("~0", "~")
                target = self.root.get(box, {}).get(name) if isinstance(self.root.get(box), dict) else None
                if target is None:
                    self.fail(f"$ref target '{quote(ref)}' not found", path)
                return target, f"{self.base}.{box}.{name}"
        self.fail("only local references '#', '#/$defs/NAME' and '#/definitions/NAME' are supported", path)

    def walk(self, node, path, depth):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.fail(f"schema too large (more than {MAX_NODES} subschemas)", path)
        if depth > MAX_DEPTH:
            self.fail(f"schema nested deeper than {MAX_DEPTH} levels", path)
        if node is True:
            return
        if node is False or not isinstance(node, dict):
            why = " (false schemas accept nothing)" if node is False else ""
            self.fail("a schema must be a JSON object" + why, path)
        for key in node:
            if key not in ENFORCED and key not in ANNOTATIONS:
                self.fail(f"JSON Schema keyword '{quote(key)}' is not supported", f"{path}.{key}")
        if "$id" in node and depth > 0:
            self.fail("'$id' is only supported on the root schema", f"{path}.$id")
        combos = [k for k in COMBINATORS if k in node]
        if combos:  # siblings of a combinator would need schema intersection, which the grammar cannot express
            extra = [k for k in node if k not in ANNOTATIONS and k not in CONTAINERS and k != combos[0]]
            if extra:
                self.fail(f"{combos[0]!r} combined with '{quote(extra[0])}' is not supported", f"{path}.{extra[0]}")
            key = combos[0]
            if key == "$ref":
                target, tpath = self.resolve(node["$ref"], f"{path}.$ref")
                if node["$ref"] not in self.defs:
                    self.defs[node["$ref"]] = target if isinstance(target, dict) else {}
                    self.ref_paths[node["$ref"]] = tpath
                    self.walk(target, tpath, depth + 1)
                return
            subs = node[key]
            if not isinstance(subs, list) or not subs:
                self.fail(f"'{key}' must be a non-empty array of schemas", f"{path}.{key}")
            if key == "allOf" and len(subs) != 1:
                self.fail("'allOf' with more than one schema is not supported", f"{path}.allOf")
            for i, s in enumerate(subs):
                self.walk(s, f"{path}.{key}[{i}]", depth + 1)
            return
        self.check_type(node, path)
        if "enum" in node or "const" in node:
            self.check_literals(node, path)
            return
        fams = families(node)
        if "object" in fams:
            self.check_object(node, path, depth)
        if "array" in fams:
            self.check_array(node, path, depth)
        if "string" in fams:
            self.check_string(node, path)
        if "number" in fams or "integer" in fams:
            self.check_number(node, path)

    def check_type(self, node, path):
        t = node.get("type")
        if t is None:
            return
        ts = [t] if isinstance(t, str) else t
        if not isinstance(ts, list) or not ts or len(set(map(str, ts))) != len(ts) or not all(x in TYPES for x in ts):
            self.fail(f"'type' must be one of {sorted(TYPES)} or a non-empty array of them", f"{path}.type")

    def check_literals(self, node, path):
        extra = [k for k in node if k not in ANNOTATIONS and k not in CONTAINERS and k not in ("enum", "const", "type")]
        if extra:
            self.fail(f"'enum'/'const' combined with '{quote(extra[0])}' is not supported", f"{path}.{extra[0]}")
        if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"] or len(node["enum"]) > MAX_ENUM):
            self.fail(f"'enum' must be a non-empty array of at most {MAX_ENUM} values", f"{path}.enum")

    def check_object(self, node, path, depth):
        props = node.get("properties", {})
        if not isinstance(props, dict) or len(props) > MAX_PROPERTIES:
            self.fail(f"'properties' must be an object with at most {MAX_PROPERTIES} entries", f"{path}.properties")
        for name, sub in props.items():
            self.walk(sub, f"{path}.properties.{name}", depth + 1)
        req = node.get("required", [])
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req) or len(set(req)) != len(req):
            self.fail("'required' must be an array of unique strings", f"{path}.required")
        for r in req:
            if r not in props:  # the grammar only generates declared properties
                self.fail(f"required property '{quote(r)}' is not declared in 'properties'", f"{path}.required")
        ap = node.get("additionalProperties", True)
        if not isinstance(ap, bool):
            self.walk(ap, f"{path}.additionalProperties", depth + 1)

    def check_array(self, node, path, depth):
        lo, hi = node.get("minItems", 0), node.get("maxItems")
        for key, v in (("minItems", lo), ("maxItems", hi)):
            if v is not None and (not _is_int(v) or not 0 <= v <= MAX_ITEMS_BOUND):
                self.fail(f"'{key}' must be an integer between 0 and {MAX_ITEMS_BOUND}", f"{path}.{key}")
        if hi is not None and lo > hi:
            self.fail("'minItems' is greater than 'maxItems'", f"{path}.minItems")
        if node.get("uniqueItems", False) is not False:
            self.fail("'uniqueItems' is not supported", f"{path}.uniqueItems")
        items = node.get("items", True)
        if "prefixItems" in node:
            pre = node["prefixItems"]
            if not isinstance(pre, list) or not pre:
                self.fail("'prefixItems' must be a non-empty array of schemas", f"{path}.prefixItems")
            for i, s in enumerate(pre):
                self.walk(s, f"{path}.prefixItems[{i}]", depth + 1)
            # we generate exactly the tuple, which must then satisfy the item-count bounds
            if lo > len(pre) or (hi is not None and hi < len(pre)):
                self.fail("'minItems'/'maxItems' with 'prefixItems' must admit exactly the tuple length",
                          f"{path}.prefixItems")
            if not isinstance(items, bool):
                self.walk(items, f"{path}.items", depth + 1)
        elif items is False:
            if lo > 0:
                self.fail("'items': false with 'minItems' > 0 accepts nothing", f"{path}.items")
        elif items is not True:
            self.walk(items, f"{path}.items", depth + 1)

    def check_string(self, node, path):
        for key in ("minLength", "maxLength"):
            v = node.get(key)
            if v is not None and (not _is_int(v) or not 0 <= v <= MAX_STRING_BOUND):
                self.fail(f"'{key}' must be an integer between 0 and {MAX_STRING_BOUND}", f"{path}.{key}")
        if node.get("minLength", 0) > node.get("maxLength", MAX_STRING_BOUND):
            self.fail("'minLength' is greater than 'maxLength'", f"{path}.minLength")
        kinds = [k for k in ("pattern", "format") if k in node]
        lengths = [k for k in ("minLength", "maxLength") if k in node]
        if kinds and (len(kinds) > 1 or lengths):  # would need an intersection of two string languages
            other = kinds[1] if len(kinds) > 1 else lengths[0]
            self.fail(f"{kinds[0]!r} combined with {other!r} is not supported", f"{path}.{other}")
        if "format" in node and node["format"] not in FORMATS:
            self.fail(f"string format '{quote(node['format'])}' is not supported (supported: {sorted(FORMATS)})",
                      f"{path}.format")
        if "pattern" in node:  # translate now so regex errors are reported before any grammar is built
            pattern_to_gbnf(node["pattern"], f"{path}.pattern")

    def check_number(self, node, path):
        for key in NUMBER_KW:
            if key in node and not _is_num(node[key]):
                self.fail(f"'{key}' must be a number", f"{path}.{key}")
        for key in NUMBER_KW:
            if key in node and abs(node[key]) > LIMIT:
                self.fail(f"'{key}' must be within ±{LIMIT}", f"{path}.{key}")


def check_schema(schema, path: str) -> Checked:
    """Validate ``schema`` (the value at request field ``path``); raise InvalidRequest naming the first problem."""
    if not isinstance(schema, dict):
        raise InvalidRequest("the schema must be a JSON object", param=path)
    c = _Checker(schema, path)
    c.walk(schema, path, 0)
    _check_recursion(c)
    return Checked(schema, c.defs)


def _direct_refs(node) -> list[str]:
    """Refs a node reaches without the grammar consuming a character (left-recursion candidates)."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        return [node["$ref"]]
    out = []
    for key in ("anyOf", "oneOf", "allOf"):
        for s in node.get(key, []):
            out += _direct_refs(s)
    return out


def productive(node, ok: dict) -> bool:
    """Whether a finite instance exists, given which refs are already known to have one."""
    if not isinstance(node, dict):
        return node is True
    if "$ref" in node:
        return ok.get(node["$ref"], False)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            return (all if key == "allOf" else any)(productive(s, ok) for s in node[key])
    if "enum" in node or "const" in node:
        return True
    fams = families(node)
    if "object" in fams and "properties" in node:
        if all(productive(node["properties"][r], ok) for r in node.get("required", [])):
            return True
    elif "object" in fams:
        return True
    if "array" in fams:
        if "prefixItems" in node:
            if all(productive(s, ok) for s in node["prefixItems"]):
                return True
        elif node.get("minItems", 0) == 0 or productive(node.get("items", True), ok):
            return True
    return any(f in fams for f in ("string", "number", "integer", "boolean", "null"))


def _check_recursion(c: _Checker):
    for ref in c.defs:  # a cycle of bare refs/unions would be a left-recursive grammar
        seen, stack = set(), [ref]
        while stack:
            for nxt in _direct_refs(c.defs[stack.pop()]):
                if nxt == ref:
                    raise InvalidRequest("recursive $ref that does not go through an object or array",
                                         param=c.ref_paths[ref])
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    ok: dict[str, bool] = {}
    changed = True
    while changed:  # least fixpoint: which definitions have a finite instance
        changed = False
        for ref, node in c.defs.items():
            if not ok.get(ref) and productive(node, ok):
                ok[ref] = changed = True
    for ref in c.defs:
        if not ok.get(ref):
            raise InvalidRequest("recursive schema has no finite instance", param=c.ref_paths[ref])
    if not productive(c.root, ok):
        raise InvalidRequest("schema has no finite instance", param=c.base)
