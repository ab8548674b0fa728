"""The thread-count controller (backends/llama/threads.py) against a simulated machine, and the usable-core count
from CPU affinity and cgroup quotas. Fast: no model, no clock (the simulation's time is the sum of its steps)."""

from __future__ import annotations

import math
import os
import time

import pytest

from reverb.backends.llama.threads import (EngineThreads, ThreadClock, ThreadControl, ThreadPlan, cgroup_quota,
                                           usable_cores)

STEP = 0.007  # seconds one decode call takes on two quiet cores


class Machine:
    """``cores`` cores, ``busy`` of them taken by busy loops. A call at ``n`` threads gets a share of a core per
    thread; when a thread waits for a time slice, the others spin at llama.cpp's barrier: a call that does not get
    all its cores takes 20 times longer (what two threads beside one busy loop do on two cores)."""

    def __init__(self, cores: int, busy: int = 0):
        self.cores, self.busy, self.now = cores, busy, 0.0

    def call(self, n: int, work: float = STEP * 2) -> tuple[float, float]:
        share = min(1.0, self.cores / (n + self.busy))
        wall = work / n if share >= 1 else work / n / share * (20 if n > 1 else 1)
        self.now += wall
        return wall, wall * share


def run(ctl: ThreadControl, machine: Machine, seconds: float) -> dict[int, float]:
    """Decode for ``seconds`` of simulated time; returns the time spent at each thread count."""
    spent: dict[int, float] = {}
    end = machine.now + seconds
    while machine.now < end:
        n = ctl.count
        wall, cpu = machine.call(n)
        spent[n] = spent.get(n, 0.0) + wall
        ctl.observe(wall, cpu)
    return spent


def test_quiet_keeps_every_core_and_never_moves():
    ctl = ThreadControl(most=2)
    spent = run(ctl, Machine(2), 60)
    assert ctl.count == 2 and ctl.changes == 0 and set(spent) == {2}


def test_one_busy_loop_on_two_cores_drops_to_one_thread_and_stays_there_mostly():
    ctl, machine = ThreadControl(most=2), Machine(2, busy=1)
    first = run(ctl, machine, 0.5)  # two collapsed steps (0.2 s each) decide
    assert ctl.count == 1, first
    spent = run(ctl, machine, 300)
    # Probes of a second thread back off to one every PROBE_MOST seconds: a few percent of the time.
    assert spent.get(2, 0) < 0.1 * spent[1], spent
    assert ctl.count == 1


def test_probing_backs_off_while_contention_lasts():
    ctl, machine = ThreadControl(most=2), Machine(2, busy=1)
    run(ctl, machine, 2)
    tries, probe_steps = [], 0
    while machine.now < 200:
        before = ctl.count
        probe_steps += before == 2
        wall, cpu = machine.call(ctl.count)
        if ctl.observe(wall, cpu) > before:
            tries.append(machine.now)
    assert probe_steps == len(tries)  # a failed try costs one (collapsed) step
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert len(tries) >= 4 and all(b >= a - 0.01 for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[1] > 1.5 * gaps[0]                              # each failed try doubles the wait...
    assert max(gaps) <= ThreadControl.PROBE_MOST + 2            # ... up to a bound


def test_a_probe_whose_step_collapses_fails_at_once_even_if_the_owner_thread_spins_on_a_cpu():
    """Two threads that collapse at the barrier can show the owner thread fully on a CPU (it spins there while the
    other waits for a time slice): the probe's step time against the steps before it catches that in one step."""
    c = ThreadControl(2)
    for _ in range(20):
        c.observe(0.02, 0.01)                  # two threads, each with half a core: drop to one
    assert c.count == 1
    while c.count == 1:
        c.observe(0.02, 0.02)                  # one thread gets its core: after PROBE_FIRST, a probe
    assert c.count == 2
    c.observe(0.5, 0.5)                        # the probe's first step: 25 times slower, the owner "on a CPU"
    assert c.count == 1 and c._wait == 2 * ThreadControl.PROBE_FIRST


def test_two_busy_loops_settle_on_one_thread_without_probing():
    ctl, machine = ThreadControl(most=2), Machine(2, busy=2)
    run(ctl, machine, 2)
    changes = ctl.changes
    spent = run(ctl, machine, 120)
    # One thread gets 2/3 of a core: no room for a second thread, so no probe is even tried.
    assert ctl.count == 1 and ctl.changes == changes and set(spent) == {1}


def test_back_to_every_core_when_contention_ends():
    ctl, machine = ThreadControl(most=2), Machine(2, busy=1)
    run(ctl, machine, 120)
    assert ctl.count == 1
    machine.busy = 0
    run(ctl, machine, ThreadControl.PROBE_MOST + 1)
    assert ctl.count == 2


def test_many_cores_settle_on_the_cores_left():
    ctl, machine = ThreadControl(most=16), Machine(16, busy=4)
    run(ctl, machine, 5)
    assert ctl.count == 12
    machine.busy = 0
    run(ctl, machine, 20)
    assert ctl.count == 16


def test_a_fractional_quota_does_not_make_the_count_flap():
    """About 1.5 cores of quota, wavering (cgroup throttling stops every thread at once, so nothing collapses): the
    count settles instead of moving every second between 1 and 2."""

    class Quota(Machine):
        def call(self, n, work=STEP * 2):
            share = min(1.0, (1.5 + 0.1 * math.sin(self.now)) / n)
            wall = work / n / share
            self.now += wall
            return wall, wall * share

    ctl = ThreadControl(most=2)
    run(ctl, Quota(2), 120)
    assert ctl.changes < 20, ctl.changes


def test_one_preempted_call_does_not_move_the_count():
    ctl, machine = ThreadControl(most=2), Machine(2)
    run(ctl, machine, 1)
    ctl.observe(0.030, 0.010)  # one slow step among quiet ones: 20 ms off the CPU
    run(ctl, machine, 1)
    assert ctl.changes == 0


def test_bounds():
    assert ThreadControl(most=0).count == 1
    ctl = ThreadControl(most=1)
    run(ctl, Machine(1, busy=3), 30)
    assert ctl.count == 1 and ctl.changes == 0
    ctl = ThreadControl(most=2)
    assert ctl.observe(0.0, 0.0) == 2  # a step that took no measurable time says nothing


def test_explicit_counts_are_fixed_and_zero_adapts():
    assert ThreadPlan.from_flags(3, 0) == ThreadPlan(3, 3, adapt=False, adapt_batch=False)
    assert ThreadPlan.from_flags(0, 0) == ThreadPlan(usable_cores(), usable_cores(), adapt=True, adapt_batch=True)
    assert ThreadPlan.from_flags(0, 1) == ThreadPlan(usable_cores(), 1, adapt=True, adapt_batch=False)


class ScriptedClock:
    """A ThreadClock whose thread gets ``share`` of each step's runnable time."""

    def __init__(self):
        self.ran = self.runnable = 0.0
        self.share = 1.0

    def read(self):
        return "scripted", self.ran, self.runnable

    def step(self, seconds: float):
        self.runnable += seconds
        self.ran += seconds * self.share

    def close(self):
        pass


class Recorder:
    def __init__(self):
        self.set = []

    def set_threads(self, n_threads, n_threads_batch):
        self.set.append((n_threads, n_threads_batch))


def test_engine_threads_applies_the_count_to_the_adapting_side_only():
    for plan, expect in [(ThreadPlan(2, 2, True, True), (1, 1)), (ThreadPlan(2, 4, True, False), (1, 4))]:
        engine, clock = Recorder(), ScriptedClock()
        follow = EngineThreads(engine, plan)
        follow._clock = clock
        clock.share = 0.6
        for _ in range(4):
            started = follow.start()
            clock.step(0.15)
            follow.stop(started)
        assert engine.set == [expect] and follow.counts() == expect


def test_thread_clock_measures_this_thread():
    clock = ThreadClock()
    kind, ran0, runnable0 = clock.read()
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:
        pass
    _, ran1, runnable1 = clock.read()
    assert ran1 > ran0 and runnable1 - runnable0 >= ran1 - ran0 - 0.01
    assert kind == ("schedstat" if os.path.exists("/proc/thread-self/schedstat") else "cpu/wall")
    clock.close()  # as when the file stops reading: the fallback takes over
    assert clock.read()[0] == "cpu/wall"


def test_a_step_across_a_clock_change_is_not_observed():
    engine, clock = Recorder(), ScriptedClock()
    follow = EngineThreads(engine, ThreadPlan(2, 2, True, True))
    follow._clock = clock
    clock.share = 0.1
    for _ in range(4):
        started = ("other", *follow.start()[1:])
        clock.step(0.15)
        follow.stop(started)
    assert engine.set == [] and follow.control.changes == 0


# -- usable cores ---------------------------------------------------------------------------------------------


def fake_v2(tmp_path, quotas: dict[str, str]):
    """A process in cgroup /a/b of a unified hierarchy, with cpu.max files where ``quotas`` says."""
    proc, root = tmp_path / "proc", tmp_path / "cg"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/a/b\n")
    (root / "a" / "b").mkdir(parents=True)
    for where, text in quotas.items():
        (root / where / "cpu.max").write_text(text + "\n")
    return proc, root


def test_cgroup_v2_quota_on_a_parent_counts(tmp_path):
    proc, root = fake_v2(tmp_path, {"a/b": "max 100000", "a": "150000 100000"})
    assert cgroup_quota(proc, root) == 1.5
    assert usable_cores(proc, root) == min(len(os.sched_getaffinity(0)), 2)


def test_cgroup_v2_without_a_quota(tmp_path):
    proc, root = fake_v2(tmp_path, {"a/b": "max 100000"})
    assert cgroup_quota(proc, root) is None
    assert usable_cores(proc, root) == len(os.sched_getaffinity(0))


def test_cgroup_v2_quota_below_one_core_still_gives_one_thread(tmp_path):
    proc, root = fake_v2(tmp_path, {"a/b": "20000 100000"})
    assert cgroup_quota(proc, root) == pytest.approx(0.2)
    assert usable_cores(proc, root) == 1


def test_cgroup_v1_quota(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cg"
    proc.mkdir()
    (proc / "cgroup").write_text("4:memory:/x\n2:cpu,cpuacct:/x\n0::/\n")
    d = root / "cpu,cpuacct" / "x"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("100000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(proc, root) == 1.0
    assert usable_cores(proc, root) == 1


def test_affinity_caps_the_count_and_garbage_is_ignored(tmp_path):
    proc, root = fake_v2(tmp_path, {"a/b": "not numbers"})
    assert cgroup_quota(proc, root) is None
    assert cgroup_quota(tmp_path / "nowhere", root) is None
    assert usable_cores(proc, root) == len(os.sched_getaffinity(0))


def test_negative_thread_counts_are_refused():
    from reverb.errors import ConfigError
    from reverb.settings import Settings
    for kw in ({"threads": -1}, {"threads_batch": -1}):
        with pytest.raises(ConfigError) as err:
            Settings.build({}, **kw)
        assert err.value.param == next(iter(kw))
