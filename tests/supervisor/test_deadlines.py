"""Start deadline and watchdog: a child that never says READY=1, or stops pinging, is killed."""

from __future__ import annotations

import trio

from tests.supervisor.conftest import policy, proc_state, status_fields, wait_until


async def test_no_ready_within_the_start_deadline_kills_and_counts_a_failure(sup, make_spec):
    sup.apply({"t/slow": make_spec("t/slow", "--no-ready",
                                   policy=policy(start_timeout=0.4, backoff_initial=5.0))})
    starting = await sup.wait_state("t/slow", "starting", 10)
    assert not starting.ready
    t0 = trio.current_time()
    status = await sup.wait_state("t/slow", "backoff", 10)
    assert 0.2 <= trio.current_time() - t0 < 2.0
    assert "not ready within 0.4 s (no READY=1): killed" in status.message
    assert status.last_exit == "killed by SIGKILL"
    assert status.restarts == 1
    assert proc_state(starting.pid) is None


async def test_watchdog_silence_kills_and_restarts(sup, make_spec):
    sup.apply({"t/hung": make_spec("t/hung", "--no-watchdog",
                                   policy=policy(watchdog_timeout=0.4)),
               "t/fine": make_spec("t/fine", policy=policy(watchdog_timeout=0.4))})
    hung = await sup.wait_state("t/hung", "running", 10)
    fine = await sup.wait_state("t/fine", "running", 10)
    status = await sup.wait_state("t/hung", "backoff", 10)
    assert "watchdog: no WATCHDOG=1 for 0.4 s: killed" in status.message
    assert status.last_exit == "killed by SIGKILL"
    again = await sup.wait_state("t/hung", "running", 10)
    assert again.pid != hung.pid
    # The child that pings every 0.1 s has been up through the same span untouched.
    now = sup.status("t/fine")
    assert now.pid == fine.pid and now.restarts == 0
    assert status_fields(now.message)["pid"] == str(fine.pid)


async def test_a_mass_start_spawns_only_as_many_as_there_are_start_slots(make_supervisor, make_spec):
    # Children that never say READY=1 hold their slot until their start deadline kills them.
    sup = await make_supervisor(max_parallel_starts=2)
    names = [f"t/s{i}" for i in range(5)]
    sup.apply({n: make_spec(n, "--no-ready", policy=policy(start_timeout=0.5, backoff_initial=30.0))
               for n in names})
    await wait_until(lambda: sum(s.pid is not None for s in sup.snapshot()) == 2)
    queued = [s for s in sup.snapshot() if s.pid is None]
    assert len(queued) == 3 and all(s.state == "starting" for s in queued)
    # As the first two miss their deadline, the queued ones get the slots; never more than two.
    seen_at_once = 0
    with trio.fail_after(10):
        while any(s.restarts == 0 for s in sup.snapshot()):
            seen_at_once = max(seen_at_once, sum(s.pid is not None for s in sup.snapshot()))
            await trio.sleep(0.01)
    assert seen_at_once == 2
