"""Architecture rules that a test can hold: each third-party library is imported in one place."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = {  # library -> the only modules (relative to the repo) allowed to import it
    "llama_cpp": {"runtime/engine.py"},
    "huggingface_hub": {"runtime/download.py"},
    "uvicorn": {"runtime/cli.py", "runtime/pytest_plugin.py"},
}
STARLETTE_HOME = "runtime/api/"


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_third_party_imports_stay_in_their_module():
    for path in (ROOT / "runtime").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        used = imports(path)
        for lib, allowed in RULES.items():
            assert lib not in used or rel in allowed, f"{rel} imports {lib}"
        if "starlette" in used:
            assert rel.startswith(STARLETTE_HOME), f"{rel} imports starlette"


def test_convert_never_imports_runtime():
    for path in (ROOT / "convert").rglob("*.py"):
        assert "runtime" not in imports(path), path


def test_ledger_sits_beside_the_engine():
    assert not {"engine", "scheduler"} & {n.split(".")[-1] for n in _relative(ROOT / "runtime" / "ledger.py")}
    assert "ledger" not in {n.split(".")[-1] for n in _relative(ROOT / "runtime" / "scheduler.py")}
    assert "ledger" not in {n.split(".")[-1] for n in _relative(ROOT / "runtime" / "engine.py")}


def _relative(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0}


def test_modules_stay_small():
    for path in list((ROOT / "runtime").rglob("*.py")) + list((ROOT / "convert").rglob("*.py")):
        assert len(path.read_text().splitlines()) < 450, path
