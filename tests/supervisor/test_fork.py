"""Fork mode's own promises: a template crash spares its children, a template that cannot start
(or could not fork safely) means exec with the reason in status, forked children drop privileges."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from oraclewad.supervisor.process import can_switch_users
from tests.supervisor.conftest import FAST, child_argv, proc_state, wait_until

FORK = replace(FAST, spawn="fork")


@pytest.fixture
def spawn_mode() -> str:
    return "fork"


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def test_a_template_crash_spares_its_children(sup, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec("t/a", policy=FORK)
    sup.apply({spec.name: spec})
    first = await sup.wait_state(spec.name, "running", 10)
    assert first.spawn == "fork" and first.spawn_note == ""
    template = sup.templates.template(sys.executable)
    old_template = template.pid
    assert old_template is not None and os.getppid() != old_template
    # The child is the daemon's (re-parented before it ran anything), not the template's.
    assert int(proc_status(first.pid)["PPid"]) == os.getpid()
    os.kill(old_template, signal.SIGKILL)
    await wait_until(lambda: template.pid not in (None, old_template), timeout=10)
    assert sup.status(spec.name).pid == first.pid and proc_state(first.pid) not in (None, "Z")
    # The next process comes from the new template.
    status = await sup.restart(spec.name)
    assert status.state == "running" and status.spawn == "fork" and status.pid != first.pid
    assert template.pid != old_template


async def test_a_release_whose_template_cannot_start_runs_exec_and_says_why(sup, make_spec) -> None:  # type: ignore[no-untyped-def]
    # The system interpreter has no oraclewad installed: its template exits at import.
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK) or python == sys.executable:
        pytest.skip("needs a second interpreter without this package")
    spec = replace(make_spec("t/b", policy=FORK), argv=(python, "-S", *child_argv()[2:]))
    sup.apply({spec.name: spec})
    status = await sup.wait_state(spec.name, "running", 30)
    assert status.spawn == "exec"
    assert status.spawn_note.startswith("spawn=exec: its template did not start")
    assert "oraclewad" in status.spawn_note      # the template's own last words: the missing module


async def test_a_template_that_started_a_thread_refuses_to_fork(make_supervisor, make_spec, root,
                                                               monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lib = root / "lib"
    lib.mkdir()
    (lib / "owa_threaded.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    sup = await make_supervisor(template_preload=("owa_threaded",))
    spec = make_spec("t/c", policy=FORK)
    sup.apply({spec.name: spec})
    status = await sup.wait_state(spec.name, "running", 30)
    assert status.spawn == "exec"
    assert "2 threads" in status.spawn_note and "refused" in status.spawn_note


async def test_arguments_that_cannot_be_forked_exec(sup, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = replace(make_spec("t/d", policy=FORK), argv=(sys.executable, "-c", "import time; time.sleep(60)"),
                   notify=False)
    sup.apply({spec.name: spec})
    status = await sup.wait_state(spec.name, "running", 10)
    assert status.spawn == "exec"
    assert "-c" in status.spawn_note


@pytest.mark.skipif(not can_switch_users(), reason="needs root (or CAP_SETUID and CAP_SETGID)")
async def test_a_forked_child_runs_as_its_user_without_privileges(sup, make_spec, root) -> None:  # type: ignore[no-untyped-def]
    uid = 62417
    os.chmod(root, 0o755)
    for folder in (Path(sys.executable).parent, *Path(sys.executable).parents, *root.parents):
        if not os.stat(folder).st_mode & 0o001:
            pytest.skip(f"{folder} is closed to other users")
    spec = make_spec("t/e", policy=FORK, user=(uid, uid), private_tmp=root / "tmp" / "e")
    sup.apply({spec.name: spec})
    status = await sup.wait_state(spec.name, "running", 10)
    assert status.spawn == "fork"
    st = proc_status(status.pid)
    assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(uid)] * 4
    assert st["Groups"] == "" and st["NoNewPrivs"] == "1"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[caps], 16) == 0, caps
    assert os.readlink(f"/proc/{status.pid}/cwd") == str(root / "tmp" / "e")
    # Only the contract's descriptors (0-2 here) and its own notify socket: nothing of the template's.
    extra = [os.readlink(f"/proc/{status.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{status.pid}/fd")
             if int(fd) > 2]
    assert len(extra) <= 1 and all(target.startswith("socket:") for target in extra), extra


def spares(template: int) -> list[int]:
    """The template's forked-ahead children: ours (re-parented), still in its process group."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != template:
            with contextlib.suppress(OSError):
                if os.getpgid(int(name)) == template and int(proc_status(int(name))["PPid"]) == os.getpid():
                    found.append(int(name))
    return found


async def test_the_next_child_waits_forked_ahead_and_a_lost_one_is_replaced(sup, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec("t/f", policy=FORK)
    sup.apply({spec.name: spec})
    first = await sup.wait_state(spec.name, "running", 10)
    template = sup.templates.template(sys.executable).pid
    assert template is not None
    await wait_until(lambda: len(spares(template)) == 1, timeout=10)
    spare = spares(template)[0]
    # The restart's process is the spare that was waiting, and a new spare waits after it.
    second = await sup.restart(spec.name)
    assert second.state == "running" and second.spawn == "fork" and second.pid == spare
    await wait_until(lambda: len(spares(template)) == 1 and spare not in spares(template), timeout=10)
    # A spare killed meanwhile: the template forks one for the request instead.
    os.kill(spares(template)[0], signal.SIGKILL)
    third = await sup.restart(spec.name)
    assert third.state == "running" and third.spawn == "fork" and third.spawn_note == ""
    assert third.pid not in (first.pid, second.pid) and sup.templates.template(sys.executable).pid == template
    # A spare outlives no template: it leaves when the template's socket closes (here a crash).
    await wait_until(lambda: len(spares(template)) == 1, timeout=10)
    left = spares(template)
    os.kill(template, signal.SIGKILL)
    await wait_until(lambda: proc_state(left[0]) in (None, "Z"), timeout=10)
