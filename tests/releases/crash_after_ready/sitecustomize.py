"""The `crashes-after-ready` test release's interpreter loads this (its wrapper puts this folder on
PYTHONPATH): the service dies by SIGKILL 3 s after it said READY=1, however long its start took
(a timer from exec would fire before READY on a loaded machine, a different failure).

Its notify datagrams go through a relay in the same process (the daemon checks the sender's pid,
which a thread shares), which sees READY=1 pass."""

import os
import signal
import socket
import threading

CRASH_AFTER = 3.0


def _relay(inbound: socket.socket, address: str) -> None:
    outbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    while True:
        datagram = inbound.recv(65536)
        outbound.sendto(datagram, address)
        if b"READY=1" in datagram.split(b"\n"):
            threading.Timer(CRASH_AFTER, os.kill, (os.getpid(), signal.SIGKILL)).start()


def _install() -> None:
    real = os.environ.get("NOTIFY_SOCKET", "")
    if not real:
        return
    name = f"owa-crash-after-ready-{os.getpid()}"
    inbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    inbound.bind("\0" + name)
    os.environ["NOTIFY_SOCKET"] = "@" + name
    address = "\0" + real[1:] if real.startswith("@") else real
    threading.Thread(target=_relay, args=(inbound, address), daemon=True).start()


_install()
