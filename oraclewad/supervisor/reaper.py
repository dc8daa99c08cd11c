"""Subreaper duty: collect orphaned grandchildren that the kernel re-parents to the daemon.

Only zombies are reaped, each by pid; never waitpid(-1), which would steal the exit status of
a process some other part of the daemon (or the runner owning it) is waiting for.

Which zombies are orphans? A process the daemon forked itself has the daemon's session id or,
if it called setsid, its own pid as session id. A zombie whose session is neither was forked by
someone else and re-parented to us: reaping it at once is safe. A zombie that leads its own
session is ambiguous (an orphan that called setsid, or a direct child of another part of the
daemon whose owner is about to wait for it), so it is reaped only after staying a zombie for
`grace` seconds, long after any owner would have collected it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
from collections.abc import Callable, Iterator

import trio

log = logging.getLogger("oraclewad.supervisor")

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool = True) -> bool:
    """Make orphans of our descendants re-parent to us (on) or to init again (off)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def child_pids(parent: int) -> list[int] | None:
    """Every child of `parent`, from /proc/PID/task/*/children (each thread's own children; an
    orphan is re-parented to one of the subreaper's threads). None without CONFIG_PROC_CHILDREN."""
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                pids.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            if tid == tasks[0]:
                return None     # the kernel has no children files
        except OSError:
            continue            # the thread ended meanwhile
    return pids


def zombie_children(parent: int) -> Iterator[tuple[int, int]]:
    """(pid, session id) of every zombie whose parent is `parent`, from /proc. Reads only the
    parent's children when the kernel lists them (a few hundred files fewer per sweep)."""
    pids = child_pids(parent)
    names = [str(p) for p in pids] if pids is not None else os.listdir("/proc")
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue        # gone meanwhile
        # The command name may hold spaces and parentheses: the fields start after the last ")".
        fields = data[data.rfind(b")") + 2:].split()
        if len(fields) < 4 or fields[0] != b"Z" or int(fields[1]) != parent:
            continue
        yield int(name), int(fields[3])


class Reaper:
    def __init__(self, is_ours: Callable[[int], bool], *, grace: float = 10.0) -> None:
        self._is_ours = is_ours     # pids a runner spawned and waits for itself
        self.grace = grace
        self.reaped = 0
        self._first_seen: dict[int, float] = {}

    def sweep(self, now: float) -> list[int]:
        """Reap the orphan zombies due now; returns their pids."""
        me, my_session = os.getpid(), os.getsid(0)
        done: list[int] = []
        seen: dict[int, float] = {}
        for pid, session in zombie_children(me):
            if self._is_ours(pid):
                continue
            if session in (my_session, pid):
                first = seen[pid] = self._first_seen.get(pid, now)
                if now - first < self.grace:
                    continue
                seen.pop(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
                done.append(pid)
        self._first_seen = seen
        self.reaped += len(done)
        return done

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        set_subreaper(True)
        try:
            with trio.open_signal_receiver(signal.SIGCHLD) as signals:
                task_status.started()
                while True:
                    self.sweep(trio.current_time())
                    # Every zombie there is now was found: the next one brings a SIGCHLD (they
                    # coalesce, but each wakes one sweep). Only ambiguous zombies in their grace
                    # need a timer; an idle daemon sleeps here without waking.
                    wait = self.grace / 2 if self._first_seen else math.inf
                    with trio.move_on_after(wait):
                        await signals.__anext__()
        finally:
            # Nobody reaps for us any more: let orphans go to init again.
            set_subreaper(False)
