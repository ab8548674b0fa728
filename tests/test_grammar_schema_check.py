"""Schema validation: allowlist, refusals with exact params, limits, refs, recursion."""
import pytest

from reverb.errors import InvalidRequest
from reverb.grammar import check_schema, response_format_grammar
from reverb.types import ResponseFormat

P = "response_format.json_schema.schema"


def rf(schema):
    return ResponseFormat("json_schema", schema, "t", True)


def err(schema) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as e:
        response_format_grammar(rf(schema))
    return e.value


@pytest.mark.parametrize("kw,val", [("multipleOf", 5), ("not", {}), ("if", {}), ("minProperties", 1),
                                    ("patternProperties", {}), ("propertyNames", {}), ("contains", {}),
                                    ("unevaluatedProperties", False), ("dependentRequired", {}), ("foo", 1)])
def test_refused_keyword_names_param(kw, val):
    e = err({"type": "object", "properties": {"age": {"type": "integer", kw: val}}})
    assert e.param == f"{P}.properties.age.{kw}"
    assert kw in e.message


def test_annotations_are_ignored():
    s = {"type": "object", "title": "T", "description": "d", "$schema": "x", "$id": "urn:x", "$comment": "c",
         "properties": {"a": {"type": "string", "examples": ["x"], "default": "y", "deprecated": True}}}
    assert response_format_grammar(rf(s)).grammar


def test_not_an_object():
    assert err([1]).param == P
    assert err({"type": "object", "properties": {"a": 5}}).param == f"{P}.properties.a"


def test_unique_items_true_refused_false_ok():
    assert err({"type": "array", "uniqueItems": True}).param == f"{P}.uniqueItems"
    assert response_format_grammar(rf({"type": "array", "uniqueItems": False}))


def test_required_must_be_declared():
    assert err({"type": "object", "properties": {}, "required": ["x"]}).param == f"{P}.required"


def test_bad_bounds():
    assert err({"type": "string", "minLength": 5, "maxLength": 2}).param == f"{P}.minLength"
    assert err({"type": "string", "maxLength": 10 ** 6}).param == f"{P}.maxLength"
    assert err({"type": "array", "minItems": 3, "maxItems": 1}).param == f"{P}.minItems"
    assert err({"type": "integer", "minimum": 5, "maximum": 4}).param == f"{P}.minimum"
    assert err({"type": "integer", "exclusiveMinimum": True}).param == f"{P}.exclusiveMinimum"


def test_string_combinations_refused():
    assert err({"type": "string", "pattern": "^a$", "maxLength": 3}).param == f"{P}.maxLength"
    assert err({"type": "string", "format": "hostname"}).param == f"{P}.format"
    assert err({"type": "string", "pattern": "(?=a)"}).param == f"{P}.pattern"


def test_combinator_siblings_refused():
    assert err({"type": "object", "anyOf": [{"type": "object"}]}).param == f"{P}.type"
    assert err({"$ref": "#/$defs/a", "minimum": 1, "$defs": {"a": {"type": "integer"}}}).param == f"{P}.minimum"
    assert err({"allOf": [{"type": "string"}, {"maxLength": 3}]}).param == f"{P}.allOf"


def test_refs():
    ok = {"type": "object", "properties": {"a": {"$ref": "#/definitions/x"}, "b": {"$ref": "#/$defs/y"}},
          "definitions": {"x": {"type": "string"}}, "$defs": {"y": {"type": "integer"}}}
    assert len(check_schema(ok, "s").defs) == 2
    assert err({"$ref": "http://x/y"}).param == f"{P}.$ref"
    assert err({"$ref": "#/$defs/missing"}).param == f"{P}.$ref"
    assert err({"$ref": "#/$defs/a", "$defs": {"a": {"type": "integer", "multipleOf": 2}}}).param == \
        f"{P}.$defs.a.multipleOf"


def test_recursion():
    tree = {"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}}}
    assert "root ::=" in response_format_grammar(rf(tree)).grammar
    endless = {"$ref": "#/$defs/n", "$defs": {"n": {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}},
                                                    "required": ["n"]}}}
    assert "finite" in err(endless).message
    left = {"$ref": "#/$defs/a", "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}}
    assert "recursive" in err(left).message
    assert "recursive" in err({"anyOf": [{"$ref": "#"}, {"type": "null"}]}).message


def test_limits():
    deep = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    assert "deeper" in err(deep).message
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(101)}}
    assert err(wide).param == f"{P}.properties"
    assert "enum" in err({"enum": list(range(501))}).message


def test_oneof_needs_disjoint_branches():
    assert response_format_grammar(rf({"oneOf": [{"type": "string"}, {"type": "null"}]}))
    assert response_format_grammar(rf({"oneOf": [{"const": "a"}, {"const": "b"}]}))
    tagged = {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
         "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "dog"}}, "required": ["kind"]}]}
    assert response_format_grammar(rf(tagged))
    e = err({"oneOf": [{"type": "integer"}, {"type": "number"}]})
    assert e.param == f"{P}.oneOf" and "anyOf" in e.message


def test_enum_type_mismatch():
    assert err({"type": "string", "enum": [1, 2]}).param == P
    g = response_format_grammar(rf({"type": "string", "enum": ["a", 1]})).grammar
    assert '"\\"a\\""' in g and " 1" not in g.split("root-1 ::=")[1].splitlines()[0]
