"""Test side of the child contract: spawn a service like the daemon does, play systemd's notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[2]
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def base_env(**extra: str) -> dict[str, str]:
    # Never inherit the test runner's environment: a NOTIFY_SOCKET or LISTEN_FDS there would leak in.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    return path


def listening_socket() -> socket.socket:
    """What the daemon owns: a bound, listening TCP socket that outlives any one child."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Child:
    pid: int
    pidfd: int
    lines: list[str] = field(default_factory=list)  # stdout, one entry per line
    stderr: bytearray = field(default_factory=bytearray)
    returncode: int | None = None
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def pump_stdout(self, stream: trio.lowlevel.FdStream) -> None:
        buf = b""
        async with stream:
            while chunk := await stream.receive_some():
                buf += chunk
                *complete, buf = buf.split(b"\n")
                self.lines += [line.decode() for line in complete]
                self._notify()
        if buf:
            self.lines.append(buf.decode())
        self._notify()

    async def pump_stderr(self, stream: trio.lowlevel.FdStream) -> None:
        async with stream:
            while chunk := await stream.receive_some():
                self.stderr += chunk
                self._notify()

    async def wait_log(self, msg: str, timeout: float = 30) -> dict[str, Any]:
        """The first stdout record with this msg (waits for it; a whole service start on a loaded
        machine is within the default)."""
        with trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    record = json.loads(line)
                    if record.get("msg") == msg:
                        return record
                if self.returncode is not None:
                    raise AssertionError(f"child exited {self.returncode} without logging {msg!r}:\n"
                                         f"{self.stdout}\n{self.stderr.decode()}")
                await self._changed.wait()

    async def wait(self, timeout: float = 15) -> int:
        with trio.fail_after(timeout):
            if self.returncode is None:
                await trio.lowlevel.wait_readable(self.pidfd)
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self.pidfd)
                self._notify()
        return self.returncode

    def signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self.pidfd)


def spawn(nursery: trio.Nursery, module: str, env: dict[str, str],
          listen: socket.socket | None = None) -> Child:
    """posix_spawn the module with stdout/stderr piped and, like the daemon, `listen` placed at fd 3
    in the child only (a DUP2 file action: the test process's own fd 3 is left alone)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
               (os.POSIX_SPAWN_DUP2, err_w, 2)]
    extra_fd = None
    if listen is not None:
        fd = listen.fileno()
        if fd == 3:  # dup2(3, 3) would keep close-on-exec set
            fd = extra_fd = os.dup(fd)
        actions.append((os.POSIX_SPAWN_DUP2, fd, 3))
    try:
        pid = os.posix_spawn(sys.executable, [sys.executable, "-m", module], env, file_actions=actions,
                             setsid=True, setsigdef=(signal.SIGTERM, signal.SIGINT))
    finally:
        for fd in (out_w, err_w, devnull, extra_fd):
            if fd is not None:
                os.close(fd)
    child = Child(pid, os.pidfd_open(pid))
    nursery.start_soon(child.pump_stdout, trio.lowlevel.FdStream(out_r))
    nursery.start_soon(child.pump_stderr, trio.lowlevel.FdStream(err_r))
    return child


class NotifyReceiver:
    """The daemon's NOTIFY_SOCKET: datagrams with the sender's pid from SO_PASSCRED."""

    def __init__(self, address: str) -> None:
        self.address = address  # as given in NOTIFY_SOCKET ('@' = abstract namespace)
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[str, int]] = []
        self._changed = trio.Event()

    async def bind(self) -> None:
        raw = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        await self.sock.bind(raw)

    async def pump(self) -> None:
        while True:
            data, ancdata, _flags, _addr = await self.sock.recvmsg(4096, socket.CMSG_SPACE(_CRED.size))
            pid = -1
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CRED.unpack(cdata[:_CRED.size])[0]
            self.messages.append((data.decode(), pid))
            self._changed.set()
            self._changed = trio.Event()

    def count(self, message: str, pid: int) -> int:
        return sum(1 for m, p in self.messages if m == message and p == pid)

    async def wait_for(self, message: str, child: Child, count: int = 1, timeout: float = 10) -> None:
        try:
            with trio.fail_after(timeout):
                while self.count(message, child.pid) < count:
                    await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(f"no {count} x {message!r} from pid {child.pid} within {timeout} s; got "
                                 f"{self.messages[-5:]}\n{child.stdout}\n{child.stderr.decode()}") from None

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)
