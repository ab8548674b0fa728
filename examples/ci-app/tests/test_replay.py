"""Answers recorded from a provider, replayed offline from tests/cassettes/ (one file per test).

The cassettes were recorded with ``pytest tests/test_replay.py -k recorded --reverb-record --reverb-models
provider.toml``, where provider.toml names ``gpt-4o-mini`` as an upstream (``source = "openai"``; here the
suite's scripted OpenAI-compatible upstream, ``tests/misbehaving_upstream.py``'s echo model, stood in for the
real provider); its key stayed in the server's environment. ``reverb_replay`` makes these tests replay on every
run; elsewhere ``--reverb-replay`` does it for a whole suite."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app import summarize  # noqa: E402

TEXT = "The lighthouse keeper climbed the stairs every night to light the lamp for ships at sea."
PROVIDER_MODEL = "gpt-4o-mini"   # not served here: only the cassette knows its answers


@pytest.mark.reverb_replay("strict")
def test_recorded_answer(reverb):
    answer = summarize(reverb.client, PROVIDER_MODEL, TEXT)
    assert answer == TEXT   # what the provider said (the echo model repeats the last message)
    assert reverb.replay_misses() == []


@pytest.mark.reverb_replay
def test_a_changed_prompt_is_a_miss_not_a_crash(reverb):
    """This test's cassette was recorded before its text changed: the request is reported as a miss and answered
    by the tiny model (with --reverb-replay=strict or reverb_replay("strict") the test would fail instead)."""
    answer = summarize(reverb.client, PROVIDER_MODEL, TEXT + " Storms came in the winter.")
    assert isinstance(answer, str) and answer != TEXT
    assert reverb.replay_misses() == ["POST /v1/chat/completions"]
