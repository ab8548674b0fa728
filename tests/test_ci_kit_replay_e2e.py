"""Record through an upstream provider, replay offline: one cassette per test, no key in any file, the same answers
with the same chunking, whitespace ignored, a changed prompt reported as a miss (or failed with strict)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .misbehaving_upstream import Upstream
from .upstreams import KEY_ENV, UP_KEY, remote, write_catalogue

pytestmark = [pytest.mark.model, pytest.mark.slow]

APP = '''
import json, os
PROMPT = os.environ.get("PROMPT", "alpha beta gamma delta")
OUT = os.environ["OUT"]

def messages():
    return [{"role": "system", "content": "Repeat."}, {"role": "user", "content": PROMPT}]

def test_blocking(reverb):
    r = reverb.client.chat.completions.create(model="gpt-echo", max_tokens=6, temperature=0, messages=messages())
    open(os.path.join(OUT, "blocking.json"), "w").write(json.dumps(r.choices[0].message.content))

def test_streaming(reverb):
    chunks = [c.choices[0].delta.content or "" for c in reverb.client.chat.completions.create(
        model="gpt-echo", max_tokens=6, temperature=0, messages=messages(), stream=True) if c.choices]
    open(os.path.join(OUT, "streaming.json"), "w").write(json.dumps(chunks))
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    (root / "app").mkdir()
    (root / "app" / "test_app.py").write_text(APP)
    return root


def run(project, *args, prompt=None):
    out = project / f"out-{len(list(project.glob('out-*')))}"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), KEY_ENV: UP_KEY,
           # the child runs as a user's project would: without this repository's own test plugins (hypothesis is
           # in our test extra, not in the pytest extra a user installs), 0.6 s of CPU per pytest process
           "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} -p no:hypothesispytest"}
    if prompt is not None:
        env["PROMPT"] = prompt
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project / "app",
                       capture_output=True, text=True, env=env, timeout=900)
    answers = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return r, answers


def test_record_then_replay(project):
    up = Upstream()
    try:
        catalogue = write_catalogue(project / "models.toml", {"gpt-echo": remote(up.url, "echo")}, "gpt-echo")
        r, recorded = run(project, "--reverb-record", "--reverb-models", str(catalogue))
    finally:
        up.close()   # replay never reaches it
    assert "2 passed" in r.stdout, r.stdout + r.stderr
    assert recorded == {"blocking": "alpha beta gamma delta",
                        "streaming": ["", "alpha", " beta", " gamma", " delta", ""]}
    files = sorted((project / "app" / "cassettes" / "test_app").glob("*.json"))
    assert [f.name for f in files] == ["test_blocking.json", "test_streaming.json"]
    for f in files:
        text = f.read_text()
        assert UP_KEY not in text and "sk-test-" not in text and "rk-" not in text and "Bearer" not in text
        assert json.loads(text)["interactions"][0]["request"]["body"]["messages"][1]["content"] == \
            "alpha beta gamma delta"
    stream = json.loads(files[1].read_text())["interactions"][0]["response"]
    assert stream["headers"]["content-type"].startswith("text/event-stream") and len(stream["chunks"]) >= 6

    # Replay: the tiny model's server gives the upstream's answers, chunk for chunk; whitespace does not matter;
    # under pytest-xdist each worker reads its tests' own files.
    r, replayed = run(project, "--reverb-replay", "-n", "2", prompt="  alpha beta\n gamma   delta ")
    assert "2 passed" in r.stdout and "MISS" not in r.stdout, r.stdout + r.stderr
    assert replayed == recorded

    # A changed prompt: answered by the tiny model, reported as a miss, not a crash.
    r, changed = run(project, "--reverb-replay", prompt="alpha beta gamma epsilon")
    assert "2 passed" in r.stdout, r.stdout + r.stderr
    assert "reverb replay: 2 test(s) sent requests not in their cassette" in r.stdout
    assert "MISS test_app.py::test_blocking: POST /v1/chat/completions" in r.stdout
    assert changed["blocking"] != recorded["blocking"]

    r, _ = run(project, "--reverb-replay=strict", "-k", "blocking", prompt="alpha beta gamma epsilon")
    assert "1 failed" in r.stdout and "reverb replay (strict): 1 request(s) not in" in r.stdout, r.stdout
