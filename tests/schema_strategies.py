"""Hypothesis strategies from the JSON-Schema subset our OpenAPI document uses (object, array, string, number,
integer, boolean, enum, const, oneOf, bounds). With ``mutate`` each value is sometimes replaced by a wrong type or
an extreme, so both the accepted and the refused paths get exercised."""

from __future__ import annotations

import json

from hypothesis import strategies as st

EXTREMES = st.sampled_from([None, True, -1, 0, 2**63, -(2**63), 1e308, -1e308, 1e-320, "", "x" * 300, [], {},
                            "\u0000", "<|im_end|>", "12", 3.5])


_MADE: dict[tuple[str, bool], st.SearchStrategy] = {}


def strategy(schema: dict, mutate: bool = True):
    """Built once per schema (strategies are immutable; ``st.composite`` reads its function's source each time it
    is applied, which made rebuilding them per example the fuzz tests' main cost)."""
    key = (json.dumps(schema, sort_keys=True), mutate)
    if key not in _MADE:
        base = _valid(schema, mutate)
        _MADE[key] = st.one_of(base, base, base, EXTREMES) if mutate else base
    return _MADE[key]


def _valid(s: dict, mutate: bool):
    if "const" in s:
        return st.just(s["const"])
    if "enum" in s:
        return st.sampled_from(s["enum"])
    if "oneOf" in s:
        return st.one_of(*(strategy(x, mutate) for x in s["oneOf"]))
    t = s.get("type")
    if isinstance(t, list):
        return st.one_of(*(strategy({**s, "type": x}, mutate) for x in t))
    if t == "object":
        props = s.get("properties", {})
        required = set(s.get("required", []))
        extra = s.get("additionalProperties")
        fields = {k: strategy(v, mutate) for k, v in props.items()}
        extras = strategy(extra, mutate) if isinstance(extra, dict) else None

        @st.composite
        def obj(draw):
            out = {}
            for k, strat in fields.items():
                if k in required or draw(st.booleans()):
                    out[k] = draw(strat)
            if extras is not None:
                for k in draw(st.lists(st.text(min_size=1, max_size=6), max_size=3)):
                    out[k] = draw(extras)
            return out
        return obj()
    if t == "array":
        return st.lists(strategy(s.get("items", {}), mutate), min_size=s.get("minItems", 0),
                        max_size=s.get("maxItems", 4))
    if t == "string":
        return st.text(max_size=40)
    if t == "integer":
        return st.integers(min_value=s.get("minimum"), max_value=s.get("maximum"))
    if t == "number":
        return st.floats(min_value=s.get("minimum"), max_value=s.get("maximum"), allow_nan=False,
                         allow_infinity=False)
    if t == "boolean":
        return st.booleans()
    return st.none()
