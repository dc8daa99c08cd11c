"""Real children, real signals: a crash or kill -9 brings one service back and touches no other."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import trio

from tests.supervisor.conftest import policy, proc_state, status_fields


async def test_kill_9_restarts_only_that_child(sup, make_spec):
    specs = {n: make_spec(n) for n in ("a/recovery", "a/broadcast", "b/recovery")}
    changes = sup.apply(specs)
    assert changes.added == tuple(sorted(specs))
    before = {n: (await sup.wait_state(n, "running", 10)).pid for n in specs}
    assert all(before.values())

    events = sup.subscribe()
    os.kill(before["a/broadcast"], signal.SIGKILL)
    with trio.fail_after(10):
        async for event in events:
            if event.name == "a/broadcast" and event.state == "running":
                break
    after = {s.name: s for s in sup.snapshot()}
    victim = after["a/broadcast"]
    assert victim.pid not in (None, before["a/broadcast"])
    assert victim.restarts == 1
    assert victim.last_exit == "killed by SIGKILL"
    assert status_fields(victim.message)["pid"] == str(victim.pid)
    for name in ("a/recovery", "b/recovery"):
        assert after[name].pid == before[name]
        assert after[name].restarts == 0
    assert proc_state(before["a/broadcast"]) is None       # reaped, not a zombie


async def test_unexpected_exit_code_is_recorded_and_restarted(sup, make_spec):
    sup.apply({"t/x": make_spec("t/x", "--crash-after", "0", "--exit-code", "7",
                                policy=policy(backoff_initial=0.2))})
    first = await sup.wait_state("t/x", "running", 10)
    status = await sup.wait_state("t/x", "backoff", 10)
    assert status.last_exit == "exit 7"
    assert "exited unexpectedly (exit 7)" in status.message
    assert status.pid is None
    again = await sup.wait_state("t/x", "running", 10)
    # A new process (not by pid: one that exits at READY may be gone, pid None, by the look).
    assert again.restarts > first.restarts


async def test_a_program_that_cannot_start_is_a_clear_failure_retried_with_backoff(sup, make_spec, root):
    missing = replace(make_spec("t/missing", policy=policy(backoff_initial=5.0)),
                      argv=("no-such-program-owa",))
    nowhere = make_spec("t/nowhere", cwd=root / "does-not-exist", policy=policy(backoff_initial=5.0))
    sup.apply({"t/missing": missing, "t/nowhere": nowhere})
    status = await sup.wait_state("t/missing", "backoff", 10)
    assert status.message.startswith("program 'no-such-program-owa' not found on PATH")
    assert status.restarts == 1 and status.pid is None
    status = await sup.wait_state("t/nowhere", "backoff", 10)
    assert status.message == f"working directory {root / 'does-not-exist'} does not exist"


async def test_cwd_is_applied(sup, make_spec, root):
    (root / "work").mkdir()
    sup.apply({"t/x": make_spec("t/x", cwd=root / "work")})
    status = await sup.wait_state("t/x", "running", 10)
    assert os.readlink(f"/proc/{status.pid}/cwd") == str(root / "work")
    assert status.message.startswith("pid=")       # the child itself, not the env(1) in between
