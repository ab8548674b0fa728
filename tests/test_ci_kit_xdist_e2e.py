"""The same test gives the same bytes alone, under pytest-xdist (one shared server, or one per worker) and in
another order: every answer of a small suite is recorded (--reverb-record works against the tiny model too) and
compared, ids and timestamps excluded. The other order is the shared server's run: one server answers every test,
in the reverse order and two at a time, so a difference from either shows there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]

SUITE = '''
import pytest

PROMPTS = ["Name a colour.", "Write a haiku about rain.", "What is 2 + 2?", "Say something about cats.",
           "List three fruits.", "Describe the sea in one line."]

@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_answer(reverb, i):
    kw = {"temperature": 0} if i % 2 else {"temperature": 0.9, "seed": 1234 + i}
    r = reverb.client.chat.completions.create(model=reverb.model, max_tokens=12, **kw,
                                              messages=[{"role": "user", "content": PROMPTS[i]}])
    assert r.choices[0].message.content is not None

@pytest.mark.parametrize("i", range(2))
def test_stream(reverb, i):
    for _ in reverb.client.chat.completions.create(model=reverb.model, max_tokens=12, temperature=0.7, seed=7 + i,
                                                   stream=True, messages=[{"role": "user", "content": "Tell a joke."}]):
        pass
'''
# The child runs as a user's project would: without this repository's own test plugins (hypothesis is in our test
# extra, not in the pytest extra a user installs), whose import is 0.6 s of CPU per pytest process.
CHILD_ENV = {**os.environ, "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} -p no:hypothesispytest"}
VOLATILE = re.compile(rb'"(id|created|system_fingerprint)":\s*("[^"]*"|\d+|null)')


def answers(folder) -> dict[str, list]:
    out = {}
    for f in sorted(folder.rglob("*.json")):
        items = json.loads(f.read_text())["interactions"]
        out[f.name] = [[VOLATILE.sub(b"", c.encode()) for c in i["response"]["chunks"]] for i in items]
    return out


def test_same_bytes_alone_under_xdist_and_reversed(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    ids = [f"test_suite.py::test_answer[{i}]" for i in range(6)] + [f"test_suite.py::test_stream[{i}]"
                                                                   for i in range(2)]

    temp = tmp_path / "tmp"   # the child runs' temporary files, to see what they leave behind
    temp.mkdir()

    def run(name, *args):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--reverb-record",
                            "--reverb-cassettes", name, *args], cwd=tmp_path, capture_output=True, text=True,
                           env={**CHILD_ENV, "TMPDIR": str(temp)}, timeout=1800)
        assert "8 passed" in r.stdout, r.stdout + r.stderr
        return answers(tmp_path / name)

    alone = run("alone", *ids)
    assert len(alone) == 8 and all(alone.values())
    assert run("xdist-shared-reversed", "-n", "2", "--reverb-xdist", "shared", *reversed(ids)) == alone
    assert not list(temp.glob("reverb-xdist-*")), "a passing run removes its shared server's folder"
    assert run("xdist-per-worker", "-n", "2", "--reverb-xdist", "per-worker", *ids) == alone
