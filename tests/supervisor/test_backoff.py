"""Restart delays and the breaker: pure logic first, then a real crash-looping child on a fast clock."""

from __future__ import annotations

import itertools
import os
import random
import signal
from dataclasses import replace

import pytest
import trio
from trio.testing import MockClock

from oraclewad.settings import Policy
from oraclewad.supervisor.backoff import Backoff
from tests.supervisor.conftest import policy

NO_JITTER = Policy(backoff_jitter=0.0)


def test_delays_double_from_the_initial_value_up_to_the_cap():
    b = Backoff(replace(NO_JITTER, breaker_restarts=100))
    delays = [b.failure(float(t)) for t in range(12)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60.0, 60.0])
    assert b.base_delay(10_000) == 60.0     # no float overflow after a long crash loop


def test_jitter_stays_within_bounds_and_comes_from_the_injected_rng():
    p = replace(Policy(), breaker_restarts=1000)
    a, b = Backoff(p, random.Random(42)), Backoff(p, random.Random(42))
    seq_a = [a.failure(0.0) for _ in range(20)]
    assert seq_a == [b.failure(0.0) for _ in range(20)]
    for n, delay in enumerate(seq_a, 1):
        base = a.base_delay(n)
        assert base * 0.8 <= delay <= base * 1.2
    assert len(set(seq_a[-5:])) == 5            # jittered, not all equal at the cap


def test_breaker_trips_on_n_restarts_within_the_window_and_then_retries_at_the_cap():
    b = Backoff(replace(NO_JITTER, breaker_restarts=5, breaker_window=600.0))
    delays = [b.failure(t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert not b.tripped and delays[-1] == pytest.approx(0.8)
    assert b.failure(4.0) == 60.0 and b.tripped
    assert b.failure(70.0) == 60.0 and b.tripped      # degraded keeps retrying, never gives up


def test_restarts_spread_beyond_the_window_do_not_trip_the_breaker():
    b = Backoff(replace(NO_JITTER, breaker_restarts=3, breaker_window=10.0, backoff_max=1.0))
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):
        b.failure(t)
        assert not b.tripped


def test_staying_up_past_the_reset_starts_over_and_clears_degraded():
    b = Backoff(replace(NO_JITTER, breaker_restarts=2, backoff_reset_after=60.0))
    b.failure(0.0)
    b.failure(1.0)
    assert b.tripped
    assert b.reset_due(running_since=100.0) == 160.0
    assert b.reset() is True
    assert not b.tripped and b.failures == 0
    assert b.failure(200.0) == pytest.approx(0.1)
    assert b.reset() is False


def test_a_first_failure_after_min_uptime_restarts_at_once_and_a_loop_backs_off():
    b = Backoff(replace(NO_JITTER, min_uptime=1.0, breaker_restarts=100))
    assert b.failure(100.0, up_for=99.0) == 0.0         # had served a while: back at once
    delays = [b.failure(t, up_for=5.0) for t in (101.0, 102.0, 103.0)]
    assert delays == pytest.approx([0.1, 0.2, 0.4])     # then a loop: from backoff_initial, doubling
    b.reset()                                           # stayed up backoff_reset_after
    assert b.failure(500.0, up_for=60.0) == 0.0


def test_a_process_that_never_served_min_uptime_gets_the_backoff():
    b = Backoff(replace(NO_JITTER, min_uptime=1.0))
    assert b.failure(0.0, up_for=0.5) == pytest.approx(0.1)     # crashed right after READY
    assert Backoff(NO_JITTER).failure(0.0, up_for=None) == pytest.approx(0.1)  # never READY
    assert Backoff(replace(NO_JITTER, min_uptime=0.0)).failure(0.0, up_for=0.0) == 0.0


def test_immediate_restarts_count_for_the_breaker():
    b = Backoff(replace(NO_JITTER, breaker_restarts=3, breaker_window=600.0))
    assert b.failure(0.0, up_for=30.0) == 0.0
    b.failure(1.0, up_for=30.0)
    assert b.failure(2.0, up_for=30.0) == 60.0 and b.tripped


@pytest.fixture
def fast_clock() -> MockClock:
    # Virtual time runs 20x faster than real time: backoff delays of seconds pass in a blink,
    # while the real children start and crash at their real pace.
    return MockClock(rate=20)


async def test_crash_loop_follows_the_backoff_and_degrades_without_a_hot_loop(fast_clock, sup, make_spec):
    # min_uptime out of reach: at 20x a child that crashes at once may look up for a virtual second.
    crash = policy(backoff_initial=1.0, backoff_max=8.0, backoff_jitter=0.0, breaker_restarts=4,
                   breaker_window=600.0, backoff_reset_after=20.0, start_timeout=100.0,
                   watchdog_timeout=0.0, min_uptime=1000.0)
    events = sup.subscribe()
    t0 = trio.current_time()
    sup.apply({"t/loop": make_spec("t/loop", "--crash-after", "0", policy=crash)})
    spawns: list[float] = []
    states: list[tuple[str, bool]] = []
    with trio.fail_after(400):     # virtual seconds
        async for event in events:
            states.append((event.state, event.degraded))
            if event.state == "starting":
                spawns.append(trio.current_time() - t0)
                if len(spawns) == 7:
                    break
    gaps = [b - a for a, b in itertools.pairwise(spawns)]
    expected = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]       # the 4th restart within 600 s trips the breaker
    for gap, delay in zip(gaps, expected, strict=True):
        # A gap is the child's (real, scaled) lifetime plus the delay: never shorter than the delay.
        assert delay <= gap < delay + 10.0, (gaps, expected)
    assert sum(1 for t in spawns if t < 30.0) <= 6      # no hot loop: a handful of spawns in 30 s
    assert ("backoff", False) in states and ("degraded", True) in states
    first_degraded = states.index(("degraded", True))
    assert [s for s, _ in states[:first_degraded]].count("backoff") == 3
    status = sup.status("t/loop")
    assert status.degraded and status.restarts >= 6

    # Fixed: the next spec stays up; past backoff_reset_after the breaker clears.
    sup.apply({"t/loop": make_spec("t/loop", policy=crash)})
    with trio.fail_after(400):
        async for event in events:
            if event.state == "running" and not event.degraded:
                break
    assert not sup.status("t/loop").degraded


async def test_kill_9_after_a_while_restarts_at_once_and_a_second_kill_waits_the_backoff(
        fast_clock, sup, make_spec):
    served = policy(backoff_initial=5.0, backoff_max=40.0, min_uptime=2.0, backoff_reset_after=600.0)
    sup.apply({"t/up": make_spec("t/up", policy=served)})
    events = sup.subscribe()

    async def kill_and_time_the_restart(pid: int) -> float:
        """Virtual seconds from the kill to the respawn."""
        killed = trio.current_time()
        os.kill(pid, signal.SIGKILL)
        seen_exit = False
        with trio.fail_after(200):
            async for event in events:
                seen_exit = seen_exit or event.state == "backoff"
                if event.state == "starting" and seen_exit:
                    return trio.current_time() - killed
        raise AssertionError("unreachable")

    first = await sup.wait_state("t/up", "running", 200)
    await trio.sleep(3.0)                       # READY longer than min_uptime
    assert await kill_and_time_the_restart(first.pid) < 1.0      # not the 5 s backoff
    second = await sup.wait_state("t/up", "running", 200)
    assert second.pid != first.pid
    await trio.sleep(3.0)                       # served a while again, but this is a loop now
    assert await kill_and_time_the_restart(second.pid) >= 5.0
    status = await sup.wait_state("t/up", "running", 200)
    assert status.restarts == 2
