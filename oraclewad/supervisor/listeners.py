"""Listening sockets the supervisor owns on behalf of services.

A service's socket is bound once and kept while the service exists, across every restart of its
process: connections that arrive while no process is accepting wait in the backlog instead of
being refused, and a restart never races another program for the port.
"""

from __future__ import annotations

import errno
import socket

BACKLOG = 1024


class BindError(Exception):
    """The address could not be bound; the message is for the operator."""


class Listeners:
    def __init__(self) -> None:
        self._by_name: dict[str, tuple[tuple[str, int], socket.socket]] = {}

    def acquire(self, name: str, address: tuple[str, int]) -> socket.socket:
        """The socket of `name` on `address`: the one already bound, or a new one."""
        held = self._by_name.get(name)
        if held is not None:
            if held[0] == address:
                return held[1]
            self.release(name)      # the service moved: free the old port first
        for other, (addr, _) in self._by_name.items():
            if addr == address and address[1] != 0:     # port 0: the kernel picks a free one each
                raise BindError(f"port {address[1]} on {address[0]} is already used by {other}")
        sock = _bind(address)
        self._by_name[name] = (address, sock)
        return sock

    def release(self, name: str) -> None:
        held = self._by_name.pop(name, None)
        if held is not None:
            held[1].close()

    def address(self, name: str) -> tuple[str, int] | None:
        """The address actually bound (port 0 in the spec becomes the kernel's choice)."""
        held = self._by_name.get(name)
        if held is None:
            return None
        host, port = held[1].getsockname()[:2]
        return host, port

    def close_all(self) -> None:
        for name in list(self._by_name):
            self.release(name)


def _bind(address: tuple[str, int]) -> socket.socket:
    host, port = address
    try:
        # Numeric first: a name lookup could block the trio loop on DNS.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except socket.gaierror:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise BindError(f"cannot resolve listen address {host!r}: {e.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)   # close-on-exec: only fd 3 in a child gets it
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise BindError(f"port {port} on {host} is in use by another program") from None
        if e.errno == errno.EACCES:
            raise BindError(f"no permission to listen on port {port} on {host}") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise BindError(f"{host} is not an address of this machine (port {port})") from None
        raise BindError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock

