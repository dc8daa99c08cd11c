"""Stopping: SIGTERM to the group, the grace, SIGKILL to the group; at shutdown all in parallel."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from pathlib import Path

import trio

from oraclewad.settings import LogSettings
from oraclewad.supervisor import Supervisor
from oraclewad.supervisor.process import can_switch_users
from oraclewad.tenants.uids import closed_to_others
from tests.supervisor.conftest import CHILD, child_argv, policy, proc_state, status_fields, wait_until


async def test_stop_sends_sigterm_and_the_child_reports_stopping(sup, make_spec):
    sup.apply({"t/web": make_spec("t/web")})
    await sup.wait_state("t/web", "running", 10)
    events = sup.subscribe()
    status = await sup.stop("t/web")
    assert status.state == "stopped" and status.pid is None
    assert status.last_exit == "exit 0"         # the child's SIGTERM handler exits cleanly
    states = []
    while True:
        try:
            states.append(events.receive_nowait().state)
        except trio.WouldBlock:
            break
    assert states == ["stopping", "stopped"]


async def test_child_ignoring_sigterm_is_killed_with_its_grandchild_after_the_grace(sup, make_spec):
    sup.apply({"t/stubborn": make_spec("t/stubborn", "--ignore-term", "--spawn-grandchild",
                                       policy=policy(stop_grace=0.5))})
    running = await sup.wait_state("t/stubborn", "running", 10)
    grandchild = int(status_fields(running.message)["gpid"])
    assert proc_state(grandchild) not in (None, "Z")

    t0 = trio.current_time()
    status = await sup.stop("t/stubborn")
    elapsed = trio.current_time() - t0
    assert 0.5 <= elapsed < 2.5
    assert status.last_exit == "killed by SIGKILL"
    assert "still running 0.5 s after SIGTERM: killed" in status.message
    assert proc_state(running.pid) is None
    # The grandchild got the group's SIGKILL too, and the subreaper collected it before stop()
    # returned.
    assert proc_state(grandchild) is None


async def test_crash_of_the_main_process_takes_its_group_along(sup, make_spec):
    sup.apply({"t/crash": make_spec("t/crash", "--spawn-grandchild", "--crash-after", "0.3",
                                    policy=policy(backoff_initial=5.0))})
    running = await sup.wait_state("t/crash", "running", 10)
    grandchild = int(status_fields(running.message)["gpid"])
    await sup.wait_state("t/crash", "backoff", 10)
    await wait_until(lambda: proc_state(grandchild) is None)


async def test_shutdown_stops_every_group_in_parallel(root, make_spec):
    sup = Supervisor(root / "run", root / "state", LogSettings(), rng=random.Random(1))
    names = [f"t{i}/svc" for i in range(3)]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            sup.apply({n: make_spec(n, "--ignore-term", "--spawn-grandchild",
                                    policy=policy(stop_grace=0.6)) for n in names})
            running = [await sup.wait_state(n, "running", 10) for n in names]
            pids = [s.pid for s in running] + [int(status_fields(s.message)["gpid"]) for s in running]
            t0 = trio.current_time()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - t0
    # Three graces of 0.6 s one after another would be 1.8 s.
    assert 0.6 <= elapsed < 1.5
    for pid in pids:
        assert proc_state(pid) is None      # gone and reaped, grandchildren included
    assert not (root / "run" / "notify.sock").exists()


DAEMON = """
import sys
from pathlib import Path

import trio

from oraclewad.settings import LogSettings, Policy
from oraclewad.supervisor import ProcessSpec, Supervisor


async def main():
    root = Path(sys.argv[1])
    sup = Supervisor(root / "run2", root / "state2", LogSettings(), template_preload=())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        uid = int(sys.argv[3])
        sup.apply({"t/x": ProcessSpec(name="t/x", group="t", argv=tuple(sys.argv[4:]), log_dir=root / "l",
                                      policy=Policy(spawn=sys.argv[2]), user=(uid, uid) if uid else None)})
        print((await sup.wait_state("t/x", "running", 10)).pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_children_die_with_the_daemon(root, spawn_mode):
    # A daemon killed with SIGKILL runs no cleanup: the children's death signal does the job. As
    # another user when we can: a uid switch clears a death signal set before it.
    uid = 62419 if can_switch_users() and closed_to_others([CHILD, Path(sys.executable)]) is None else 0
    proc = await trio.lowlevel.open_process([sys.executable, "-c", DAEMON, str(root), spawn_mode, str(uid),
                                             *child_argv()],
                                            stdout=subprocess.PIPE)
    try:
        with trio.fail_after(10):
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(100)
        child = int(line)
        assert proc_state(child) not in (None, "Z")
    finally:
        proc.kill()
        await proc.wait()
    await wait_until(lambda: proc_state(child) in (None, "Z"))
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child, os.WNOHANG)   # in case it was re-parented to this process
