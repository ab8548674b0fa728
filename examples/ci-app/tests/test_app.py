"""The app's own tests, run against a real tiny model through reverb's pytest plugin (the `reverb` fixture)."""

import sys
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app import summarize, summarize_streaming  # noqa: E402

TEXT = "The lighthouse keeper climbed the stairs every night to light the lamp for ships at sea."


def test_summary_is_text_and_deterministic(reverb):
    a = summarize(reverb.client, reverb.model, TEXT)
    assert a and isinstance(a, str)
    assert summarize(reverb.client, reverb.model, TEXT) == a


def test_streaming_parser_matches_the_blocking_call(reverb):
    assert summarize_streaming(reverb.client, reverb.model, TEXT) == summarize(reverb.client, reverb.model, TEXT)


def test_errors_surface_as_sdk_exceptions(reverb):
    with pytest.raises(openai.NotFoundError):
        reverb.client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(base_url=reverb.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        summarize(bad, reverb.model, TEXT)


def test_startup_is_measured(reverb):
    assert 0 < reverb.startup_seconds < 120


def test_answers_do_not_depend_on_what_runs_beside_them(reverb):
    """The fixture's server is deterministic: the same summary alone and while other tests' requests share it."""
    from concurrent.futures import ThreadPoolExecutor
    alone = summarize(reverb.client, reverb.model, TEXT * 4)
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(summarize, reverb.client, reverb.model, f"Story number {i}: " + TEXT) for i in range(2)]
        together = summarize(reverb.client, reverb.model, TEXT * 4)
        [f.result() for f in busy]
    assert together == alone
