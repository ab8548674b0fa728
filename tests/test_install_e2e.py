"""Putting reverb into someone else's project with the one documented command (scripts/install-reverb.sh): a fresh
virtual environment outside the checkout, reverb from a git URL, the pytest extra and the tiny model, then the
user's own test through the plugin. The compiled llama-cpp-python wheel is reused (REVERB_LLAMA_WHEEL, as the
script allows), so nothing is recompiled; the flags it would build with are checked against this CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]  # installs packages and starts a server: the slow tier

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-reverb.sh"
SOURCES = ("runtime", "convert", "pyproject.toml", "README.md", "models.toml")


def test_build_flags_follow_this_cpu_and_never_native():
    out = subprocess.run(["sh", str(SCRIPT), "unused"], capture_output=True, text=True,
                         env={**os.environ, "REVERB_INSTALL_PRINT_FLAGS": "1"}, timeout=60)
    assert out.returncode == 0, out.stderr
    flags = out.stdout.split()
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AMX_INT8=OFF" in flags and "-DGGML_AMX_TILE=OFF" in flags
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "\nflags" not in "\n" + info:
        pytest.skip("no x86 CPU flags in /proc/cpuinfo here")
    cpu = ("\n" + info).split("\nflags", 1)[1].split("\n", 1)[0].split()
    assert ("-DGGML_AVX2=ON" in flags) == ("avx2" in cpu)
    assert ("-DGGML_AVX512=ON" in flags) == ("avx512f" in cpu)


def test_one_command_installs_reverb_into_a_users_project(tmp_path):
    wheel = os.environ.get("REVERB_LLAMA_WHEEL", "")
    if not Path(wheel).is_file():
        pytest.skip("REVERB_LLAMA_WHEEL is not set to the cached llama-cpp-python wheel: run this through `make test`"
                    " (it knows the wheel built for this machine's flags)")
    repo = tmp_path / "reverb-runtime"   # a git repository of the sources, reached by a git URL as a user would
    for name in SOURCES:
        (shutil.copytree(ROOT / name, repo / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
         if (ROOT / name).is_dir() else shutil.copy2(ROOT / name, repo / name))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run([*git, *cmd], check=True, capture_output=True)
    project = tmp_path / "app"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(project / ".venv")], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(REVERB_LLAMA_WHEEL=wheel, XDG_DATA_HOME=str(tmp_path / "data"), REVERB_THREADS="1")
    # pip without byte-compiling what it installs (imports compile what they use): half the install's CPU. pip
    # reads this variable of its --no-compile flag inverted, so "0" is what turns compiling off.
    env["PIP_NO_COMPILE"] = "0"
    out = subprocess.run(["sh", str(SCRIPT), f"git+file://{repo}", str(project / ".venv" / "bin" / "python")],
                         cwd=project, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "reverb-runtime " in out.stdout
    assert "Deprecat" not in out.stderr and "SetuptoolsWarning" not in out.stderr   # a quiet install
    (project / "test_app.py").write_text(
        "def test_model_answers(reverb):\n"
        "    r = reverb.client.chat.completions.create(model=reverb.model, max_tokens=5, temperature=0,\n"
        "        messages=[{'role': 'user', 'content': 'Say hi'}])\n"
        "    assert r.choices[0].message.content and r.usage.completion_tokens > 0\n")
    r = subprocess.run([str(project / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                       cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert "1 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
