"""apply(): only what changed is touched, and pids prove it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from oraclewad.errors import NotFound
from tests.supervisor.conftest import proc_state


async def test_apply_restarts_only_the_changed_spec(sup, make_spec):
    specs = {n: make_spec(n) for n in ("a/recovery", "a/broadcast", "b/recovery")}
    sup.apply(specs)
    before = {n: (await sup.wait_state(n, "running", 10)).pid for n in specs}

    changed = dict(specs)
    changed["a/broadcast"] = replace(specs["a/broadcast"], env=(("FEATURE", "on"),))
    # Labels are display-only: a new label is not a reason to restart.
    changed["b/recovery"] = replace(specs["b/recovery"], labels=(("release", "v2"),))
    changes = sup.apply(changed)
    assert changes.restarted == ("a/broadcast",)
    assert changes.unchanged == ("a/recovery", "b/recovery")
    assert changes.added == changes.removed == ()

    await sup.wait_state("a/broadcast", "stopping", 5)
    status = await sup.wait_state("a/broadcast", "running", 10)
    assert status.pid != before["a/broadcast"]
    assert status.restarts == 0                 # a reload is not a crash
    assert proc_state(before["a/broadcast"]) is None
    now = {s.name: s for s in sup.snapshot()}
    assert now["a/recovery"].pid == before["a/recovery"]
    assert now["b/recovery"].pid == before["b/recovery"]
    assert now["b/recovery"].labels == (("release", "v2"),)


async def test_apply_adds_and_removes_without_touching_the_rest(sup, make_spec, root):
    keep, gone, new = "a/recovery", "b/recovery", "c/recovery"
    sup.apply({keep: make_spec(keep), gone: make_spec(gone, config='{"secret": 1}', admin_socket=True)})
    kept_pid = (await sup.wait_state(keep, "running", 10)).pid
    gone_pid = (await sup.wait_state(gone, "running", 10)).pid
    admin = root / "run" / "admin" / "b-recovery.sock"
    assert admin.exists()

    changes = sup.apply({keep: make_spec(keep), new: make_spec(new)})
    assert changes.added == (new,)
    assert changes.removed == (gone,)
    assert changes.unchanged == (keep,)
    await sup.wait_removed(gone, 10)
    assert proc_state(gone_pid) is None
    assert not admin.exists()                   # nothing of it is left behind
    await sup.wait_state(new, "running", 10)
    assert sup.status(keep).pid == kept_pid
    assert [s.name for s in sup.snapshot()] == [keep, new]
    with pytest.raises(NotFound):
        await sup.stop(gone)


async def test_child_environment_and_files(sup, make_spec, root):
    spec = make_spec("acme/recovery", "--print-env", config='{"dsn": "x"}', admin_socket=True,
                     listen=("127.0.0.1", 0), env=(("OWA_TENANT", "acme"),))
    sup.apply({spec.name: spec})
    status = await sup.wait_state(spec.name, "running", 10)
    line = (spec.log_dir / "combined.log").read_text().splitlines()[0]
    environ = json.loads(line)["env"]
    assert environ["OWA_TENANT"] == "acme"
    # Everything arrives as a descriptor (oraclewad/contract.py): no path into our folders.
    assert "OWA_CONFIG" not in environ and "OWA_ADMIN_SOCKET" not in environ
    assert environ["NOTIFY_SOCKET"].startswith("@oraclewad-")
    assert environ["LISTEN_FDS"] == "2" and environ["LISTEN_FDNAMES"] == "http:admin"
    assert environ["OWA_CONFIG_FD"] == "5"
    assert "LISTEN_PID" not in environ
    assert environ["WATCHDOG_USEC"] == "5000000"
    assert Path(f"/proc/{status.pid}/fd/5").read_text() == '{"dsn": "x"}'
    assert (root / "run" / "admin").stat().st_mode & 0o777 == 0o700
    assert (root / "run" / "admin" / "acme-recovery.sock").stat().st_mode & 0o777 == 0o600
    assert not (root / "run" / "children").exists()     # no credentials on disk
    # Its own session and process group, so a stop reaches everything it started.
    stat = Path(f"/proc/{status.pid}/stat").read_text().rpartition(")")[2].split()
    assert int(stat[2]) == int(stat[3]) == status.pid
    assert status.started_at is not None and status.uptime is not None and status.uptime >= 0


async def test_verbs_on_unknown_names_raise_not_found(sup):
    for verb in (sup.start, sup.stop, sup.restart):
        with pytest.raises(NotFound):
            await verb("nobody/home")
    with pytest.raises(NotFound):
        sup.status("nobody/home")


async def test_restart_and_start_verbs(sup, make_spec):
    sup.apply({"t/x": make_spec("t/x")})
    first = await sup.wait_state("t/x", "running", 10)
    second = await sup.restart("t/x")
    assert second.state == "running" and second.pid != first.pid and second.restarts == 0
    stopped = await sup.stop("t/x")
    assert stopped.state == "stopped"
    third = await sup.start("t/x")
    assert third.state == "running" and third.pid not in (first.pid, second.pid)
    assert (await sup.start("t/x")).pid == third.pid     # already running: nothing happens


async def test_slow_subscriber_is_dropped_and_never_blocks(sup, make_spec):
    slow = sup.subscribe(buffer=1)
    fast = sup.subscribe()
    sup.apply({"t/x": make_spec("t/x")})
    await sup.wait_state("t/x", "running", 10)
    assert (await slow.receive()).state == "starting"
    with pytest.raises(trio.EndOfChannel):
        await slow.receive()                    # cut off after falling behind
    assert [fast.receive_nowait().state for _ in range(2)] == ["starting", "running"]


def _fds(pid: int) -> dict[int, str]:
    fds = {}
    for n in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):    # closed between listing and reading
            fds[int(n)] = os.readlink(f"/proc/{pid}/fd/{n}")
    return fds


async def test_child_inherits_exactly_the_contracts_descriptors(sup, make_spec, root):
    # A daemon-side socket marked inheritable (hypercorn does that to the metrics listener).
    stray = socket.socket()
    stray.bind(("127.0.0.1", 0))
    stray.listen()
    stray.set_inheritable(True)
    try:
        spec = make_spec("acme/recovery", config='{"dsn": "x"}', admin_socket=True, notify=False,
                         listen=("127.0.0.1", 0))
        spec = replace(spec, argv=("sleep", "60"))     # opens nothing of its own
        sup.apply({spec.name: spec})
        pid = (await sup.wait_state(spec.name, "running", 10)).pid
        while not os.readlink(f"/proc/{pid}/exe").endswith("/sleep"):   # still in setpriv
            await trio.sleep(0.01)
        # Once exec'd, the loader and setlocale open and close files of their own (libc, the
        # locale archive) as the next free fd: wait for those to go; an inherited one stays.
        with trio.move_on_after(5):
            while sorted(fds := _fds(pid)) != [0, 1, 2, 3, 4, 5]:
                await trio.sleep(0.01)
    finally:
        stray.close()
    assert sorted(fds) == [0, 1, 2, 3, 4, 5], fds
    assert fds[0] == "/dev/null" and fds[1].startswith("pipe:") and fds[2].startswith("pipe:")
    assert fds[3].startswith("socket:") and fds[4].startswith("socket:")
    assert fds[5].startswith("/memfd:oraclewa-config")
    # The config cannot be changed through the child's copy (sealed).
    with pytest.raises(PermissionError), open(f"/proc/{pid}/fd/5", "w"):
        pass
