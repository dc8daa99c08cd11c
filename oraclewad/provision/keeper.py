"""Keeps the embedded PostgreSQL and Redis running, and makes them die with the daemon.

`ServerKeeper.run()` (a daemon task) supervises each embedded server like any child: a server
whose process is gone, or that has answered no probe for HANG_TIMEOUT seconds (SIGSTOP, a
wedged process), is killed and started again with backoff; its data directory is reused, so
nothing committed is lost. A death is seen at once (the keeper waits on a pidfd of the
server's process); a hang only by probing, which opens a session (a PostgreSQL backend fork)
and so runs every PROBE_INTERVAL seconds with jitter, and every FAILING_INTERVAL while failing.
A `guard` process (oraclewad.provision.guard) learns every server pid and stops the servers
when the daemon dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

import trio

log = logging.getLogger("oraclewad.provision")

PROBE_INTERVAL = 5.0
PROBE_JITTER = 0.2            # +-20 %: the two servers' probes do not fire together
FAILING_INTERVAL = 1.0
HANG_TIMEOUT = 5.0
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0


class EmbeddedServer(Protocol):
    NAME: str
    STOP_SIGNAL: str
    COMMAND_WORD: str

    def pid(self) -> int | None: ...
    def probe(self) -> None: ...
    def start(self) -> None: ...


class Guard:
    """The guard process and the pipe that tells it the current pids (see guard.py)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oraclewad.provision.guard"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True, text=True)
        assert self.proc.stdin is not None
        self._pipe: IO[str] = self.proc.stdin

    def watch(self, server: EmbeddedServer) -> None:
        pid = server.pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                self._pipe.write(f"{server.NAME} {pid} {server.STOP_SIGNAL} {server.COMMAND_WORD}\n")
                self._pipe.flush()

    def close(self) -> None:
        """After the servers stopped: the guard finds nothing to stop and exits."""
        with contextlib.suppress(OSError):
            self._pipe.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ServerKeeper:
    def __init__(self, servers: list[EmbeddedServer], guard: Guard,
                 on_change: Callable[[str, str, str], None] | None = None) -> None:
        self.servers = servers
        self.guard = guard
        self.on_change = on_change or (lambda name, state, message: None)
        self.restarts: dict[str, int] = {s.NAME: 0 for s in servers}
        for server in servers:
            guard.watch(server)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for server in self.servers:
                nursery.start_soon(self._keep, server)

    async def _keep(self, server: EmbeddedServer) -> None:
        failing_since: float | None = None
        last_pid = server.pid()
        while True:
            wait = (FAILING_INTERVAL if failing_since is not None
                    else PROBE_INTERVAL * random.uniform(1 - PROBE_JITTER, 1 + PROBE_JITTER))
            pid = await _wait_exit(server.pid(), wait)
            if pid is not None:
                last_pid = pid
                try:
                    await trio.to_thread.run_sync(server.probe, abandon_on_cancel=True)
                except Exception as e:
                    now = trio.current_time()
                    if failing_since is None:
                        failing_since = now
                        log.warning("embedded %s (pid %d) does not answer: %s", server.NAME, pid,
                                    " ".join(str(e).split()) or type(e).__name__)
                    if now - failing_since < HANG_TIMEOUT:
                        continue
                    why = f"no answer for {HANG_TIMEOUT:g} s: killed pid {pid}"
                    log.error("embedded %s: %s", server.NAME, why)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    await self._wait_gone(server, pid)
                else:
                    failing_since = None
                    continue
            else:
                why = "its process is gone"
                log.error("embedded %s: %s", server.NAME, why)
            if last_pid is not None:
                _reap(last_pid)
            self.on_change(server.NAME, "restarting", why)
            failing_since = None
            await self._restart(server)

    async def _wait_gone(self, server: EmbeddedServer, pid: int) -> None:
        with trio.move_on_after(10):
            while server.pid() == pid:
                await trio.sleep(0.05)

    async def _restart(self, server: EmbeddedServer) -> None:
        delay = BACKOFF_INITIAL
        while True:
            await trio.sleep(delay)
            try:
                await trio.to_thread.run_sync(server.start)
            except Exception as e:
                delay = min(delay * 2, BACKOFF_MAX)
                log.error("embedded %s failed to start (retry in %g s): %s", server.NAME, delay,
                          str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
                continue
            self.restarts[server.NAME] += 1
            self.guard.watch(server)
            log.info("embedded %s restarted (pid %s; restart %d)", server.NAME, server.pid(),
                     self.restarts[server.NAME])
            self.on_change(server.NAME, "running", f"restarted, pid {server.pid()}")
            return


async def _wait_exit(pid: int | None, timeout: float) -> int | None:
    """Wait `timeout` seconds unless process `pid` ends first; `pid` if it still runs then."""
    if pid is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    try:
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(fd)     # readable once the process has exited
            return None
    finally:
        os.close(fd)
    return pid


def _reap(pid: int) -> None:
    """A dead server daemonized by pg_ctl/redis is our orphan (we are a subreaper): collect it
    now, or its zombie would look alive to pgserver's restart check until the reaper's grace."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    except OSError:
        return
    if fields and fields[0] == b"Z" and int(fields[1]) == os.getpid():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
