"""The daemon's side of systemd's notify protocol (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)."""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends to $NOTIFY_SOCKET; a no-op when not run by systemd (or another notify-aware parent)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # systemd recommends pinging at half the timeout; a third leaves room for a busy loop.
        self.watchdog_interval: float | None = int(usec) / 3e6 if watched else None
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
