"""A server with the default thread count beside a busy loop: decode keeps a share of its speed instead of
collapsing (backends/llama/threads.py). One server, its decode rate quiet and then with a busy loop on one of its
two cores, compared as a ratio within the test."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

import pytest

from .conftest import kill_group, spawn

BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {%d})\nprint('spinning', flush=True)\nwhile True:\n    pass\n"


def stream_times(server, no_eos: dict, tokens: int) -> list[float]:
    """When each content event of one stream arrived."""
    times = []
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": tokens, "temperature": 0, "stream": True, "logit_bias": no_eos}
    with server.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                times.append(time.monotonic())
    assert len(times) >= tokens // 2, times
    return times


def rate(times: list[float]) -> float:
    """Tokens per second over the second half of a stream (the first half leaves the thread count time to move)."""
    half = times[len(times) // 2:]
    return (len(half) - 1) / (half[-1] - half[0])


def threads_gauge(server) -> float:
    with server.client() as http:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith("reverb_threads{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no reverb_threads gauge")


def test_a_busy_loop_on_one_of_two_cores_costs_a_share_not_a_collapse(make_server, no_eos):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cores[:2]))  # the server inherits two cores, whatever the machine has
    try:
        srv = make_server("--parallel", "1", env={"REVERB_THREADS": "0", "REVERB_THREADS_BATCH": "0"})
    finally:
        os.sched_setaffinity(0, mine)
    assert threads_gauge(srv) in (1, 2)  # at most the cores it may use, not the machine's count
    stream_times(srv, no_eos, 4)  # warm up
    quiet = rate(stream_times(srv, no_eos, 64))
    busy = spawn([sys.executable, "-c", BUSY_LOOP % cores[1]], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline().strip() == "spinning"
        stream_times(srv, no_eos, 24)  # the count settles on the CPU left, as on a server running beside that work
        loaded = rate(stream_times(srv, no_eos, 64))
    finally:
        kill_group(busy)
    # One thread on the core left keeps about half the speed of two; two threads waiting for each other at
    # llama.cpp's barriers kept 2-8% of it. A wide margin, since both rates come from a shared machine.
    assert loaded > 0.2 * quiet, (quiet, loaded, srv.log()[-2000:])


@pytest.fixture(scope="module")
def engines(model_path):
    """One two-thread engine per mode, loaded on first use and shared by the cases (each clears its sequence)."""
    from reverb.backends.llama.engine import Engine, EngineConfig
    made: dict = {}

    def get(deterministic: bool):
        if deterministic not in made:
            made[deterministic] = Engine(model_path, EngineConfig(n_ctx=1024, n_seq=1, n_threads=2,
                                                                  n_threads_batch=2, deterministic=deterministic))
        return made[deterministic]
    yield get
    for eng in made.values():
        eng.close()


@pytest.mark.parametrize("deterministic,repeat", [(True, 1), (True, 45), (False, 1)])
def test_the_thread_count_does_not_change_the_logits(engines, deterministic, repeat):
    """The count moves between steps; --deterministic's promise (the same tokens whatever runs beside) must hold:
    before position 256 no path depends on the count; from 256 on a lone row takes flash attention's KV-split
    path, which splits by thread count, so deterministic mode keeps the configured count there."""
    import numpy as np

    eng = engines(deterministic)
    try:
        prompt = eng.tokenize("<|im_start|>user\n" + "Tell me about the sea. " * repeat
                              + "<|im_end|>\n<|im_start|>assistant\n", special=True)
        runs = []
        for n in (1, 2):
            eng.set_threads(n, n)
            eng.seq_remove(0)
            # prompt pieces as deterministic mode cuts them: under 64 rows (one-row kernel) before 256, 64 after
            starts = [*range(0, min(len(prompt), 256), 32), *range(256, len(prompt), 64), len(prompt)]
            for start, end in itertools.pairwise(starts):
                piece = prompt[start:end]
                eng.decode([(t, start + i, 0, start + i == len(prompt) - 1) for i, t in enumerate(piece)])
            rows = [eng.logits(-1)]
            for pos in range(len(prompt), len(prompt) + 4):
                eng.decode([(int(np.argmax(rows[-1])), pos, 0, True)])
                rows.append(eng.logits(-1))
            runs.append(np.stack(rows))
        assert (len(prompt) > 256) == (repeat > 1)
        assert np.array_equal(runs[0], runs[1])
    finally:
        eng.set_threads(2, 2)   # as configured, for the next case
