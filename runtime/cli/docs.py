"""The docs that cannot drift: the tables generated from the code (the request fields from api/fields.py, the
server flags from Settings) and the links between README.md and docs/. In the manner of simonw/llm's cog: a
generated table sits in its Markdown file between two markers and is rewritten there.

    python -m reverb.cli.docs --write    # regenerate the tables in place
    python -m reverb.cli.docs            # check tables and links; exit 1 naming what differs (make lint runs it)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

from ..api import fieldtable
from . import flags

# name -> (the file that holds it, relative to the repository root, and its generator)
TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "field table": ("docs/api-fields.md", fieldtable.markdown),
    "flag table": ("docs/operations.md", flags.markdown),
}
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def begin(name: str) -> str:
    return f"<!-- generated {name}: edit the code, then run `python -m reverb.cli.docs --write` -->\n"


def end(name: str) -> str:
    return f"<!-- end of the generated {name} -->\n"


def _span(text: str, name: str) -> tuple[int, int] | None:
    a, b = text.find(begin(name)), text.find(end(name))
    return (a + len(begin(name)), b) if 0 <= a < b else None


def problems(root: Path) -> list[str]:
    out = []
    for name, (path, generate) in TABLES.items():
        file = root / path
        text = file.read_text(encoding="utf-8") if file.exists() else ""
        span = _span(text, name)
        if span is None:
            out.append(f"{path}: no generated {name} (its markers are missing)")
        elif text[span[0]:span[1]] != generate():
            out.append(f"{path}: the {name} differs from the code; run python -m reverb.cli.docs --write")
    for file in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in _LINK.findall(file.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same file
            local = (file.parent / target.split("#")[0]).resolve()
            if not local.exists():
                out.append(f"{file.relative_to(root)}: broken link {target}")
    return out


def write(root: Path) -> None:
    for name, (path, generate) in TABLES.items():
        file = root / path
        text = file.read_text(encoding="utf-8")
        span = _span(text, name)
        if span is None:
            raise SystemExit(f"{path}: no markers for the {name}:\n{begin(name)}{end(name)}")
        file.write_text(text[:span[0]] + generate() + text[span[1]:], encoding="utf-8")


def main(argv: list[str]) -> int:
    root = Path.cwd()
    if argv == ["--write"]:
        write(root)
        return 0
    found = problems(root)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
