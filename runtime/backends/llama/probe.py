"""Load a model once in a child process before the server loads it, so a file that crashes llama.cpp (an abort, a
segfault) takes down the child, not the server. ``python -m reverb.backends.llama.probe PATH`` is the child; the
parent has already run the header pre-check (models/ggufcheck.py), so the child goes straight to llama.cpp."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from ...errors import ModelLoadError


def check_in_child(path: Path, timeout: float = 900) -> None:
    """Raises ModelLoadError when the child cannot load the file or dies doing it."""
    try:
        r = subprocess.run([sys.executable, "-m", "reverb.backends.llama.probe", str(path)], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ModelLoadError("loading the model file took too long in the trial load; refused") from None
    if r.returncode < 0:
        name = signal.Signals(-r.returncode).name
        raise ModelLoadError(f"llama.cpp crashed ({name}) in a trial load of the model file; refused")
    if r.returncode != 0:
        last = (r.stdout.strip().splitlines() or ["the trial load failed"])[-1]
        raise ModelLoadError(last.removeprefix("probe: "))


def main(argv: list[str]) -> int:
    from ...errors import ReverbError
    from .engine import Engine, EngineConfig
    try:
        eng = Engine(Path(argv[0]), EngineConfig(n_ctx=64, n_seq=1, n_threads=1, n_threads_batch=1, n_batch=8))
        eng.decode([(eng.bos() if eng.bos() >= 0 else 0, 0, 0, False), (0, 1, 0, True)])  # first decode too
        eng.close()
    except ReverbError as e:
        print(f"probe: {e.message}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
