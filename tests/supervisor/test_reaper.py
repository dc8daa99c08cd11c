"""The daemon is a child subreaper: orphaned grandchildren are reaped by pid, none left as zombies."""

from __future__ import annotations

import os
import signal

import trio

from oraclewad.supervisor.reaper import Reaper
from tests.supervisor.conftest import proc_state, status_fields, wait_until, zombie_children


async def test_grandchild_orphaned_by_a_kill_9_is_killed_and_reaped(sup, make_spec):
    sup.apply({"t/x": make_spec("t/x", "--spawn-grandchild")})
    running = await sup.wait_state("t/x", "running", 10)
    grandchild = int(status_fields(running.message)["gpid"])
    os.kill(running.pid, signal.SIGKILL)
    # Re-parented to us (subreaper), killed with the group, reaped: gone from /proc entirely.
    await wait_until(lambda: proc_state(grandchild) is None)
    await sup.wait_state("t/x", "running", 10)
    assert not zombie_children()


async def test_orphan_that_escaped_to_its_own_session_is_reaped_after_the_grace(sup, make_spec):
    # The grandchild double-forks, calls setsid (so the group kill cannot reach it) and exits
    # on its own after 0.5 s, a zombie whose parent is now the daemon.
    sup.apply({"t/x": make_spec("t/x", "--orphan", "0.5")})
    running = await sup.wait_state("t/x", "running", 10)
    orphan = int(status_fields(running.message)["orphan"])
    with open(f"/proc/{orphan}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    assert int(fields[1]) == os.getpid()            # re-parented to the subreaper
    assert int(fields[3]) == orphan                 # leads its own session
    await wait_until(lambda: proc_state(orphan) is None, timeout=5)
    assert sup.reaper.reaped >= 1
    assert sup.status("t/x").pid == running.pid     # the child itself was not disturbed
    assert not zombie_children()


async def test_sweep_never_reaps_pids_a_runner_waits_for(root):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    with trio.fail_after(5):
        while proc_state(pid) != "Z":
            await trio.sleep(0.01)
    mine = Reaper(lambda p: p == pid, grace=0)
    assert mine.sweep(trio.current_time()) == []
    assert proc_state(pid) == "Z"
    # A zombie in the daemon's own session may be another part of the daemon's child, about to
    # be waited for by its owner: it is left alone until the grace is over.
    patient = Reaper(lambda p: False, grace=1000)
    assert patient.sweep(trio.current_time()) == []
    assert os.waitpid(pid, 0)[0] == pid
