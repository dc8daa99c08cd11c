"""The systemd side of the child contract: sd_notify datagrams and sd_listen_fds, done by hand.

The daemon plays systemd: it reads READY=1 / WATCHDOG=1 / STOPPING=1 on NOTIFY_SOCKET and
identifies the sender with SO_PASSCRED, and passes the public listening socket as fd 3.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

import trio

from oraclewad import contract
from oraclewad.contract import HTTP_FD_NAME, LISTEN_FDS_START, unix_address
from oraclewad.services.config import ConfigError

DEFAULT_WATCHDOG_INTERVAL = 10.0
_MIN_WATCHDOG_INTERVAL = 0.01  # a tiny WATCHDOG_USEC must not turn the ping loop into a busy loop
_SEND_TIMEOUT = 1.0

log = logging.getLogger("oraclewad.services.runtime")


def check_unix_path(variable: str, path: str) -> None:
    if problem := contract.unix_path_problem(path):
        raise ConfigError(f"{variable}: {problem}; use a shorter path")


class Notifier:
    """Sends sd_notify messages; without NOTIFY_SOCKET every send is a no-op."""

    def __init__(self, path: str | None) -> None:
        self.path = path or None
        self._sock: trio.socket.SocketType | None = None
        if self.path:
            check_unix_path(contract.ENV_NOTIFY, self.path)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    async def send(self, message: str, timeout: float = _SEND_TIMEOUT) -> bool:
        """True if the datagram left; a daemon that is gone or not reading is logged, not fatal
        (the supervisor's start deadline and watchdog decide what happens then)."""
        if self.path is None:
            return False
        if self._sock is None:  # created here: trio sockets need a running trio loop
            self._sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with trio.move_on_after(timeout) as scope:
                await self._sock.sendto(message.encode(), unix_address(self.path))
        except OSError as exc:
            log.warning("notify failed", extra={"notify": message, "error": str(exc)})
            return False
        if scope.cancelled_caught:
            log.warning("notify timed out: the notify socket's queue is full", extra={"notify": message})
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: MutableMapping[str, str]) -> float:
    """Half of sd_watchdog_enabled: ping every WATCHDOG_USEC/3, or every 10 s when unset."""
    try:
        usec = contract.watchdog_usec(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if usec is None:
        return DEFAULT_WATCHDOG_INTERVAL
    return max(usec / 1e6 / contract.WATCHDOG_PINGS_PER_TIMEOUT, _MIN_WATCHDOG_INTERVAL)


def listen_http_fd(env: MutableMapping[str, str], name: str = HTTP_FD_NAME) -> int | None:
    """sd_listen_fds for one named socket: the fd number, or None when nothing was passed to us."""
    return listen_fds(env, (name,)).get(name)


def listen_fds(env: MutableMapping[str, str], wanted: tuple[str, ...] = (HTTP_FD_NAME,),
               ) -> dict[str, int]:
    """sd_listen_fds with names: {name: fd} for each of `wanted` that was passed (contract.py).

    Like sd_listen_fds(1): ignores fds meant for another pid, marks ours close-on-exec, and unsets
    the LISTEN_* variables so a grandchild cannot mistake them for its own. A single unnamed
    socket is taken as the first wanted name.
    """
    count = env.get(contract.ENV_LISTEN_FDS)
    pid = env.get(contract.ENV_LISTEN_PID)
    names = env.get(contract.ENV_LISTEN_FDNAMES)
    for key in (contract.ENV_LISTEN_FDS, contract.ENV_LISTEN_PID, contract.ENV_LISTEN_FDNAMES):
        env.pop(key, None)
    if not count or (pid and pid != str(os.getpid())):
        return {}
    try:
        n = int(count)
    except ValueError:
        raise ConfigError(f"{contract.ENV_LISTEN_FDS}: {count!r} is not a number") from None
    if n < 1:
        return {}
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + n))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            raise ConfigError(f"{contract.ENV_LISTEN_FDS}: says {n} fd(s) from {LISTEN_FDS_START}, "
                              f"but fd {fd} is not open") from None
    labels = names.split(":") if names else []
    found: dict[str, int] = {}
    if n == 1 and not labels:
        found[wanted[0]] = fds[0]
    else:
        found = {label: fd for label, fd in zip(labels, fds, strict=False) if label in wanted}
    if wanted[0] not in found:
        raise ConfigError(f"{contract.ENV_LISTEN_FDNAMES}: no socket named {wanted[0]!r} among {labels or n}")
    for name, fd in found.items():
        _check_stream_socket(name, fd)
    return found


def _check_stream_socket(name: str, fd: int) -> None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise ConfigError(f"{contract.ENV_LISTEN_FDS}: fd {fd} ({name}) is not a socket") from None
    try:
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        family = sock.family
    finally:
        sock.detach()  # the fd stays open for hypercorn
    if kind != socket.SOCK_STREAM or family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        raise ConfigError(f"{contract.ENV_LISTEN_FDS}: fd {fd} ({name}) is not a stream socket")
