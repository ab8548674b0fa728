"""One cassette file per test: what a test's key sent and got back, recorded through a real provider behind
reverb's upstream providers (``--reverb-record``), answered again offline (``--reverb-replay``).

A cassette holds the request (method, path, JSON body) and the answer (status, content type, Retry-After, and the
body in the chunks it arrived in) of each interaction, nothing else: no header of the request, so neither the
test's key nor the upstream key (which stays in the server's environment) can end up in a file. One file per
test, written by the process that ran the test, so pytest-xdist workers never share one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

VERSION = 1


def cassette_path(test_file: Path, test_name: str, root: Path | None = None) -> Path:
    """``<dir of the test file>/cassettes/<module>/<test name>.json`` (or under ``root`` when given)."""
    base = root if root is not None else test_file.parent / "cassettes"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name).strip("._")[:150] or "test"
    return base / test_file.stem / f"{safe}.json"


def interactions(journal: list[dict]) -> list[dict]:
    """The recordable part of a journal: answered requests that no test fault touched."""
    return [{"request": {"method": e["method"], "path": e["path"], "body": e["body"]}, "response": e["response"]}
            for e in journal if e.get("response") and e["response"]["status"] is not None and not e.get("fault")]


def write(path: Path, nodeid: str, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": VERSION, "test": nodeid, "interactions": items}, indent=1,
                              ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read(path: Path) -> list[dict]:
    """A cassette's interactions; [] when there is none (every request is then a miss)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: cassette version {data.get('version')!r}, this reverb reads {VERSION}")
    return data["interactions"]


def misses(journal: list[dict]) -> list[str]:
    return [f"{e['method']} {e['path']}" for e in journal if e.get("replay") == "miss"]
