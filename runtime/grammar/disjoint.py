"""oneOf support: the grammar is a plain union, so oneOf is only accepted when its branches are provably
disjoint (JSON Schema's oneOf fails when two branches match)."""
import json

from ..errors import InvalidRequest

PY_TYPES = {"null": lambda v: v is None, "boolean": lambda v: isinstance(v, bool),
            "string": lambda v: isinstance(v, str), "array": lambda v: isinstance(v, list),
            "object": lambda v: isinstance(v, dict),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
            or (isinstance(v, float) and v.is_integer())}


def canon(v) -> str:
    return json.dumps(v, sort_keys=True)


def _declared(node, defs, depth=0):
    """(types, literals) a node can match, conservatively: literals is None unless it is an enum/const."""
    if isinstance(node, dict) and "$ref" in node and depth < 8:
        return _declared(defs.get(node["$ref"], {}), defs, depth + 1)
    if not isinstance(node, dict) or any(k in node for k in ("anyOf", "oneOf", "allOf", "$ref")):
        return set(PY_TYPES), None
    if "enum" in node or "const" in node:
        vals = node["enum"] if "enum" in node else [node["const"]]
        return {t for v in vals for t in PY_TYPES if PY_TYPES[t](v)}, {canon(v) for v in vals}
    t = node.get("type")
    ts = set(PY_TYPES) if t is None else ({t} if isinstance(t, str) else set(t))
    if "number" in ts:
        ts.add("integer")
    if "integer" in ts:
        ts.add("number")
    return ts, None


def _objects_disjoint(a, b, defs) -> bool:
    """Both objects: a shared required property with disjoint literal values, or a required key the
    other forbids via additionalProperties: false."""
    for x, y in ((a, b), (b, a)):
        declared = x.get("properties", {})
        if x.get("additionalProperties") is False and any(r not in declared for r in y.get("required", [])):
            return True
    shared = set(a.get("required", [])) & set(b.get("required", []))
    for p in shared:
        (_, la), (_, lb) = _declared(a["properties"][p], defs), _declared(b["properties"][p], defs)
        if la is not None and lb is not None and not la & lb:
            return True
    return False


def check_disjoint(branches, defs, path):
    """oneOf means exactly one branch matches; the grammar is a plain union, so the branches must be
    provably disjoint (distinct types/literals, or discriminated objects), else we refuse."""
    resolved = []
    for s in branches:
        depth = 0
        while isinstance(s, dict) and "$ref" in s and depth < 8:
            s, depth = defs.get(s["$ref"], {}), depth + 1
        resolved.append(s)
    for i in range(len(branches)):
        for j in range(i + 1, len(branches)):
            (ta, la), (tb, lb) = _declared(branches[i], defs), _declared(branches[j], defs)
            if not ta & tb or (la is not None and lb is not None and not la & lb):
                continue
            a, b = resolved[i], resolved[j]
            if isinstance(a, dict) and isinstance(b, dict) and ta <= {"object"} >= tb and _objects_disjoint(a, b, defs):
                continue
            raise InvalidRequest(f"'oneOf' branches {i} and {j} may both match (use 'anyOf')", param=path)
