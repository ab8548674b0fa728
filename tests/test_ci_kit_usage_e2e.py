"""The pytest plugin's per-test keys, usage, budgets and summary, seen from a user's project run in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The child runs as a user's project would: without this repository's own test plugins (hypothesis is in our test
# extra, not in the pytest extra a user installs), whose import is 0.6 s of CPU per pytest process.
CHILD_ENV = {**os.environ, "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} -p no:hypothesispytest"}
PROJECT = '''
import pytest

def ask(reverb, n=3):
    return reverb.client.chat.completions.create(model=reverb.model, max_tokens=n, temperature=0,
                                                 messages=[{"role": "user", "content": "Say hi"}])

def test_usage_counts_this_tests_requests(reverb):
    assert reverb.usage().requests == 0
    r1, r2 = ask(reverb), ask(reverb, 4)
    u = reverb.usage()
    assert (u.requests, u.prompt_tokens, u.completion_tokens) == (
        2, r1.usage.prompt_tokens + r2.usage.prompt_tokens, r1.usage.completion_tokens + r2.usage.completion_tokens)
    assert u.tokens == r1.usage.total_tokens + r2.usage.total_tokens
    assert u.cost == u.tokens   # --reverb-prices input=1000000,output=1000000: one credit a token

def test_a_test_without_requests_used_nothing(reverb):
    assert reverb.usage().requests == 0 and reverb.usage().tokens == 0

@pytest.mark.reverb_budget(tokens=5)
def test_over_its_token_budget(reverb):
    ask(reverb)

@pytest.mark.reverb_budget(requests=1)
def test_over_its_request_budget(reverb):
    ask(reverb), ask(reverb)

@pytest.mark.reverb_budget(tokens=10_000, requests=1)
def test_within_its_budget(reverb):
    ask(reverb)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    project = tmp_path_factory.mktemp("project")
    (project / "test_usage.py").write_text(PROJECT)
    # the child run fails on purpose (a budget test), and a failed run keeps its shared server's folder: in here
    temp = tmp_path_factory.mktemp("tmp")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                               "--reverb-prices", "input=1000000,output=1000000", *args], cwd=project,
                              capture_output=True, text=True, env={**CHILD_ENV, "TMPDIR": str(temp)}, timeout=900)
    return run


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("xdist", [(), ("-n", "2", "--reverb-xdist", "shared")], ids=["alone", "xdist-shared"])
def test_usage_budgets_and_the_summary(run, xdist):
    r = run(*xdist)
    out = r.stdout
    assert "2 failed, 3 passed" in out, out + r.stderr
    assert "FAILED test_usage.py::test_over_its_token_budget" in out
    assert "FAILED test_usage.py::test_over_its_request_budget" in out
    assert "tokens used, the budget is 5" in out
    assert "reverb budget exceeded: 2 requests used, the budget is 1" in out
    summary = out[out.index("reverb: the 5 most expensive tests"):].splitlines()
    assert "at input 1000000, output 1000000 per 1M tokens" in summary[0]
    rows = [line.split() for line in summary[2:7]]
    tokens = [int(row[0]) for row in rows]
    assert tokens == sorted(tokens, reverse=True) and tokens[-1] == 0
    assert rows[0][3].endswith("test_usage_counts_this_tests_requests")   # two requests of up to 4 tokens
    assert all(float(row[2]) == int(row[0]) for row in rows)              # a credit a token
    assert summary[7].split()[0] == str(sum(tokens))


@pytest.mark.model
@pytest.mark.slow
def test_a_budget_from_the_command_line(run):
    r = run("--reverb-budget-tokens", "1", "-k", "usage_counts or without_requests")
    assert "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    assert "FAILED test_usage.py::test_usage_counts_this_tests_requests" in r.stdout
    assert "tokens used, the budget is 1 " in r.stdout


def test_bad_prices_and_budgets_are_usage_errors(run):
    r = run("--reverb-prices", "input=cheap")
    assert r.returncode == 4 and "'cheap' is not a number" in r.stderr
    r = run("--reverb-budget-tokens", "lots")
    assert r.returncode == 4 and "whole number" in r.stderr
