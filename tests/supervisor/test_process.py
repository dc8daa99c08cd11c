"""spawn(): what a child gets (fds, signals, session) and how exits read."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import trio

from oraclewad.supervisor.process import SpawnError, describe_exit, seal_inherited_fds, spawn
from oraclewad.supervisor.supervisor import minimal_env
from tests.supervisor.conftest import wait_until


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


async def test_child_gets_exactly_stdio_and_fd_3_default_signals_and_its_own_session():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        leak = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(leak, True)              # as if the daemon had inherited it
        assert leak in seal_inherited_fds()         # what Supervisor.run() does first
        child = spawn(("sleep", "30"), minimal_env(), listen_fd=listener.fileno())
        try:
            # setpriv execs sleep in place: same pid, and the death signal survives the exec.
            await wait_until(lambda: Path(f"/proc/{child.pid}/comm").read_text().strip() == "sleep")
            # The exec'd loader opens (and closes) libc as fd 4 for a moment; an inherited fd stays.
            await wait_until(lambda: sorted(int(fd) for fd in os.listdir(f"/proc/{child.pid}/fd"))
                             == [0, 1, 2, 3])
            assert os.path.samestat(os.stat(f"/proc/{child.pid}/fd/3"), os.fstat(listener.fileno()))
            status = proc_status(child.pid)
            # Python ignores SIGPIPE; an ignored disposition would survive exec. (glibc's
            # posix_spawn leaves its two internal signals, 32 and 33, ignored: glibc programs
            # install their own handlers for them.)
            glibc_internal = (1 << 31) | (1 << 32)
            assert int(status["SigIgn"], 16) & ~glibc_internal == 0
            assert int(status["SigBlk"], 16) == 0
            assert os.getsid(child.pid) == os.getpgid(child.pid) == child.pid
            child.signal_group(signal.SIGTERM)
            with trio.fail_after(5):
                assert describe_exit(await child.wait()) == "killed by SIGTERM"
        finally:
            os.close(leak)
            child.signal_group(signal.SIGKILL)
            os.close(child.stdout)
            os.close(child.stderr)


def test_describe_exit():
    assert describe_exit(None) == ""
    assert describe_exit(0) == "exit 0"
    assert describe_exit(3 << 8) == "exit 3"
    assert describe_exit(signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(signal.SIGSEGV | 0x80) == "killed by SIGSEGV (core dumped)"
    assert describe_exit(-1) == "exit status unknown"


def test_spawn_refuses_what_cannot_run(tmp_path):
    with pytest.raises(SpawnError, match="not found on PATH"):
        spawn(("surely-not-a-program-owa",), minimal_env())
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(SpawnError, match="is not an executable file"):
        spawn((str(script),), minimal_env())
    with pytest.raises(SpawnError, match="does not exist"):
        spawn(("true",), minimal_env(), cwd=tmp_path / "missing")
