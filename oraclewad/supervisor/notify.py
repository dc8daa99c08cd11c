"""The daemon-wide notify socket: children send READY=1 / WATCHDOG=1 / STOPPING=1 / STATUS=...

One unix datagram socket for every child, in the abstract namespace: children running as other
users reach it without any access to the daemon's folders. The kernel stamps each datagram with
the sender's pid and uid (SO_PASSCRED); a message counts only when both are those of the child
it names, so a child cannot speak for another (forging either needs a capability children lack).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from oraclewad.contract import MAX_NOTIFY_DATAGRAM, MAX_UNIX_PATH, parse_notify

log = logging.getLogger("oraclewad.supervisor")

_UCRED = struct.Struct("iII")   # struct ucred: pid_t pid; uid_t uid; gid_t gid
MAX_DATAGRAM = MAX_NOTIFY_DATAGRAM
parse_message = parse_notify

Handler = Callable[[dict[str, str]], None]


def abstract_name(run_dir: Path) -> str:
    """NOTIFY_SOCKET for a daemon: '@' + a name unique to its run_dir (several daemons coexist)."""
    digest = hashlib.sha256(os.fsencode(Path(run_dir).resolve())).hexdigest()[:16]
    return f"@oraclewad-{digest}/notify"


class NotifyServer:
    def __init__(self, path: Path | str) -> None:
        """path: a filesystem path, or '@name' for the abstract namespace."""
        self.path = path
        self.unknown = 0            # datagrams from pids we do not supervise, or without credentials
        self.forged = 0             # from a supervised pid, but not with the uid it runs as
        self.received = 0
        self._handlers: dict[int, tuple[Handler, int]] = {}

    @property
    def env_value(self) -> str:
        return os.fspath(self.path)

    def register(self, pid: int, handler: Handler, uid: int | None = None) -> None:
        """uid: the user the child runs as (default: ours)."""
        self._handlers[pid] = (handler, os.getuid() if uid is None else uid)

    def unregister(self, pid: int) -> None:
        self._handlers.pop(pid, None)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        abstract = isinstance(self.path, str) and self.path.startswith("@")
        if not abstract:
            path = Path(self.path)
            if len(os.fsencode(path)) > MAX_UNIX_PATH:
                raise OSError(f"notify socket path {path} is longer than {MAX_UNIX_PATH} bytes: "
                              "use a shorter run_dir")
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()      # stale from a previous daemon (the pidfile rules out a live one)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if abstract:
                assert isinstance(self.path, str)
                sock.bind("\0" + self.path[1:])
            else:
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
            if not abstract:
                with contextlib.suppress(FileNotFoundError):
                    Path(self.path).unlink()

    def _dispatch(self, data: bytes, ancdata: list[tuple[int, int, bytes]]) -> None:
        pid = uid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                pid, uid, _ = _UCRED.unpack_from(payload)
        entry = self._handlers.get(pid) if pid is not None else None
        if entry is None:
            self.unknown += 1
            return
        handler, expected_uid = entry
        if uid != expected_uid:
            self.forged += 1
            return
        try:
            handler(parse_message(data))
        except Exception:   # a bug in one runner's handler must not stop everyone's notifications
            log.exception("notify handler for pid %s failed", pid)
