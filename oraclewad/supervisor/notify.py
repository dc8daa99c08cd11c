"""The daemon-wide notify socket: children send READY=1 / WATCHDOG=1 / STOPPING=1 / STATUS=...

One unix datagram socket for every child. The kernel stamps each datagram with the sender's
pid (SO_PASSCRED), which is how a message finds its runner: a child cannot speak for another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import trio

log = logging.getLogger("oraclewad.supervisor")

_UCRED = struct.Struct("iII")   # struct ucred: pid_t pid; uid_t uid; gid_t gid
MAX_DATAGRAM = 4096
MAX_UNIX_PATH = 107             # sun_path is 108 bytes, NUL included

Handler = Callable[[dict[str, str]], None]


def parse_message(data: bytes) -> dict[str, str]:
    """KEY=VALUE lines (sd_notify format); later keys win, junk lines are skipped."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifyServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.unknown = 0            # datagrams from pids we do not supervise, or without credentials
        self.received = 0
        self._handlers: dict[int, Handler] = {}

    def register(self, pid: int, handler: Handler) -> None:
        self._handlers[pid] = handler

    def unregister(self, pid: int) -> None:
        self._handlers.pop(pid, None)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH:
            raise OSError(f"notify socket path {self.path} is longer than {MAX_UNIX_PATH} bytes: "
                          "use a shorter run_dir")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()      # stale from a previous daemon (the pidfile rules out a live one)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, 0o660)
            task_status.started()
            cmsg_space = socket.CMSG_SPACE(_UCRED.size)
            while True:
                await trio.lowlevel.wait_readable(sock)
                # Drain everything queued per wakeup: Linux queues only net.unix.max_dgram_qlen
                # (often 10) datagrams, and a child whose READY=1 finds the queue full waits.
                while True:
                    try:
                        data, ancdata, _, _ = sock.recvmsg(MAX_DATAGRAM, cmsg_space)
                    except BlockingIOError:
                        break
                    self.received += 1
                    self._dispatch(data, ancdata)
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _dispatch(self, data: bytes, ancdata: list[tuple[int, int, bytes]]) -> None:
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                pid = _UCRED.unpack_from(payload)[0]
        handler = self._handlers.get(pid) if pid is not None else None
        if handler is None:
            self.unknown += 1
            return
        try:
            handler(parse_message(data))
        except Exception:   # a bug in one runner's handler must not stop everyone's notifications
            log.exception("notify handler for pid %s failed", pid)
