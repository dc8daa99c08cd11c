"""The daemon's side of systemd's notify protocol (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)."""

from __future__ import annotations

import logging
import os
import socket

from oraclewad import contract

log = logging.getLogger("oraclewad")


class SystemdNotifier:
    """Sends to $NOTIFY_SOCKET; a no-op when not run by systemd (or another notify-aware parent)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = contract.unix_address(env.get(contract.ENV_NOTIFY, "")) or None
        try:
            usec = contract.watchdog_usec(env)
        except ValueError as exc:   # systemd's own value is well formed: a parent's mistake, not fatal
            log.warning("%s; the watchdog stays off", exc)
            usec = None
        self.watchdog_interval: float | None = (
            usec / 1e6 / contract.WATCHDOG_PINGS_PER_TIMEOUT if usec is not None else None)
        self._sock: socket.socket | None = None
        if self.address:
            # Non-blocking: a reader that stops reading must never stall the daemon's event loop.
            kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            self._sock = socket.socket(socket.AF_UNIX, kind)

    def notify(self, *lines: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False  # systemd gone or socket full: never let notification break the daemon
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
