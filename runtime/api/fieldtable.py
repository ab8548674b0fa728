"""The docs' table of request fields, generated from fields.py's rows (docs/api-fields.md holds it; ``python -m
reverb.cli.docs`` writes and checks it)."""

from __future__ import annotations

import json

from . import wire

HEADER = ("| field | chat | completions | embeddings | gateway (`options.`) | responses | messages | chat via upstream "
          "| what reverb does |\n|---|:-:|:-:|:-:|:-:|:-:|:-:|---|")


def markdown() -> str:
    """The docs' field table: one line per row (a name with a different check per dialect has one line each)."""
    lines = [HEADER]
    for row in wire.FIELDS:
        marks = []
        for d in wire.DIALECTS:
            accepted = row.accepted(d)
            if d not in row.dialects:
                marks.append("")
            elif accepted == wire.NOTHING:
                marks.append("400")
            elif accepted is not None:
                marks.append(" or ".join(f"`{_json(a)}`" for a in accepted) + " only")
            else:
                marks.append("yes")
        relay = "" if wire.CHAT not in row.dialects else "checked" if row.relay else "passed on"
        name = f"`{row.name}`" + "".join(f" (`{k}`)" for k in dict.fromkeys(row.names.values()))
        lines.append(f"| {name} | " + " | ".join(marks) + f" | {relay} | {row.doc} |")
    return "\n".join(lines) + "\n"


def _json(value) -> str:
    return json.dumps(value)
