"""Architecture rules that a test can hold: each third-party library is imported in one place, and imports only
run down the layers (api -> service -> backends / ledger -> models -> plain values)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "runtime"   # installed as `reverb`
RULES = {  # library -> the only modules (package paths) allowed to import it
    "huggingface_hub": {"models/download.py"},
    "jinja2": {"models/templates.py"},
    "uvicorn": {"cli/http_server.py"},
    "prometheus_client": {"api/metrics.py"},
    "sqlite3": {"ledger/sqlite.py"},
    "psycopg": {"ledger/postgres.py"},
    "psycopg_pool": {"ledger/postgres.py"},
    "httpx": {"backends/upstream/client.py"},
    "tqdm": {"cli/models.py"},
    "llguidance": {"backends/llama/guidance.py"},
}
HOME = {"starlette": "api/", "llama_cpp": "backends/llama/engine/"}  # library -> the only package using it
# package -> reverb packages it must never import (directly)
NEVER = {
    "models": {"api", "cli", "service", "generation", "backends", "ledger"},
    # pure Python (JSON Schema -> GBNF, tool-call parsing): only errors and types, so any layer may use it
    "grammar": {"api", "cli", "service", "generation", "backends", "ledger", "models", "settings", "request"},
    "ledger": {"api", "cli", "service", "generation", "backends", "models"},
    "backends": {"api", "cli", "service", "generation", "ledger"},
    "generation.py": {"api", "cli", "service", "backends"},
    "service.py": {"api", "cli"},
    "upkeep.py": {"api", "cli", "backends", "models"},
    "settlement.py": {"api", "cli", "backends", "service"},
    "fallbacks.py": {"api", "cli", "service", "ledger"},
    "api": {"cli"},
    "errors.py": {"*"}, "types.py": {"*"}, "money.py": {"*"},
    "request.py": {"api", "cli", "service", "generation", "backends", "ledger", "models"},
    "settings.py": {"api", "cli", "service", "generation", "backends", "ledger", "models"},
}


def third_party(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def reverb_imports(path: Path) -> set[str]:
    """Top-level reverb packages/modules a file imports (relative imports resolved), e.g. {"ledger", "types.py"}."""
    rel = path.relative_to(PKG).parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level > 0):
            continue
        base = list(rel[: len(rel) - (node.level - 1)]) if node.level > 1 else list(rel)
        parts = base + (node.module.split(".") if node.module else [])
        names = [parts] if node.module else [base + [a.name] for a in node.names]
        for p in names:
            if p:
                out.add(p[0] if (PKG / p[0]).is_dir() else p[0] + ".py")
    return out


def owner(path: Path) -> str:
    first = path.relative_to(PKG).parts[0]
    return first


def test_third_party_imports_stay_in_their_module():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        used = third_party(path)
        for lib, allowed in RULES.items():
            assert lib not in used or rel in allowed, f"{rel} imports {lib}"
        for lib, home in HOME.items():
            assert lib not in used or rel.startswith(home), f"{rel} imports {lib}"


def test_imports_run_down_the_layers():
    for path in PKG.rglob("*.py"):
        banned = NEVER.get(owner(path), set())
        own = owner(path)
        for target in reverb_imports(path) - {own}:
            assert "*" not in banned and target.removesuffix(".py") not in {b.removesuffix(".py") for b in banned}, \
                f"{path.relative_to(PKG)} imports {target}"


def test_no_import_circles_within_a_package():
    """Module A importing B while B imports A (even lazily, inside a function) is a seam in the wrong place."""
    edges = set()
    for path in PKG.rglob("*.py"):
        here = path.relative_to(PKG).with_suffix("")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                edges |= {(here.as_posix(), (here.parent / t.replace(".", "/")).as_posix()) for t in targets}
    circles = sorted(a + " <-> " + b for a, b in edges if (b, a) in edges and a < b)
    assert not circles, circles


def test_convert_never_imports_the_rest_of_reverb():
    for path in (ROOT / "convert").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path} reaches out of convert/"
                assert not (node.module or "").startswith(("reverb", "runtime")), path


def test_modules_stay_small():
    for path in list(PKG.rglob("*.py")) + list((ROOT / "convert").rglob("*.py")):
        assert len(path.read_text().splitlines()) < 450, path
