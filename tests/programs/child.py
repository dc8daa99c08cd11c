"""A tiny supervised child for the supervisor tests (stdlib only, starts in a few ms).

Speaks the notify protocol on $NOTIFY_SOCKET (READY=1, WATCHDOG=1 every WATCHDOG_USEC/4,
STOPPING=1 on SIGTERM) and reports what the tests look at in STATUS=, as space-separated
key=value pairs: pid, ino (of fd 3), gpid (grandchild), orphan. With LISTEN_FDS=1 it accepts on
fd 3 and answers every line with its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

_notify_sock: socket.socket | None = None


def notify(*lines: str) -> None:
    global _notify_sock
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if _notify_sock is None:
        _notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if address.startswith("@"):          # the abstract namespace, as sd_notify reads it
        address = "\0" + address[1:]
    with contextlib.suppress(OSError):   # supervisor gone: its death signal, not this, ends us
        _notify_sock.sendto("\n".join(lines).encode(), address)


def out(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps({"ts": time.time(), **record}) + "\n")
    sys.stdout.flush()


# Set on SIGTERM (and before a crash on purpose): the server stops accepting and finishes the
# connection in hand, so a swap between two of these processes drops no request.
_stopping = threading.Event()
_server: threading.Thread | None = None


def serve(sock: socket.socket) -> None:
    # Non-blocking accept after poll: a blocking accept() could not be told to stop, and a
    # connection the kernel hands over at exit would be reset.
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while not _stopping.is_set():
        if not poller.poll(20):
            continue
        try:
            conn, _ = sock.accept()
        except BlockingIOError:     # the other process of a swap took it
            continue
        conn.setblocking(True)
        with conn, conn.makefile("rwb") as f:
            f.readline()
            f.write(f"{os.getpid()}\n".encode())
            f.flush()


def drain() -> None:
    _stopping.set()
    if _server is not None:
        _server.join(timeout=2)


def spawn_grandchild(ignore_term: bool) -> int:
    pid = os.fork()
    if pid == 0:
        if not ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            time.sleep(3600)
    return pid


def spawn_orphan(lifetime: float) -> int:
    """Double fork: the grandchild escapes to its own session and is re-parented to the daemon."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            os.setsid()
            os.write(w, f"{os.getpid()}\n".encode())     # only once it has escaped
            os.close(r)
            os.close(w)
            time.sleep(lifetime)
            os._exit(0)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        grandchild = int(f.readline())
    os.waitpid(middle, 0)
    return grandchild


def main() -> None:  # noqa: C901 (one flag per misbehaviour the supervisor tests need)
    p = argparse.ArgumentParser()
    p.add_argument("--crash-after", type=float, default=None)
    p.add_argument("--exit-at-start", action="store_true")
    p.add_argument("--exit-code", type=int, default=3)
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--spawn-grandchild", action="store_true")
    p.add_argument("--orphan", type=float, default=None, metavar="LIFETIME")
    p.add_argument("--no-ready", action="store_true")
    p.add_argument("--no-watchdog", action="store_true")
    p.add_argument("--log-sample", action="store_true")
    p.add_argument("--log-bytes", type=int, default=0)
    p.add_argument("--long-line", type=int, default=0)
    p.add_argument("--print-env", action="store_true")
    args = p.parse_args()

    status = {"pid": os.getpid()}
    if args.exit_at_start:
        sys.exit(args.exit_code)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_term(signum: int, frame: object) -> None:
            notify("STOPPING=1")
            drain()
            out({"level": "info", "msg": "stopping on SIGTERM"})
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
    if args.spawn_grandchild:
        status["gpid"] = spawn_grandchild(args.ignore_term)
    if args.orphan is not None:
        status["orphan"] = spawn_orphan(args.orphan)
    if os.environ.get("LISTEN_FDNAMES", "").split(":")[0] == "http":
        sock = socket.socket(fileno=3)
        status["ino"] = os.fstat(3).st_ino
        global _server
        _server = threading.Thread(target=serve, args=(sock,), daemon=True)
        _server.start()

    if args.print_env:
        # What it runs with (fork mode: /proc/<pid>/environ still shows the template's).
        out({"level": "info", "msg": "environment", "env": dict(os.environ)})
    if args.log_sample:
        for record in (
            {"level": "info", "channel": "webhook", "msg": "order received", "order": 17},
            {"level": "info", "channel": "broadcast", "msg": "campaign tick"},
            {"level": "warning", "channel": "antiban", "msg": "slowing down"},
            {"level": "error", "channel": "webhook", "msg": "send failed"},
            {"level": "info", "channel": "Bad Channel!", "msg": "bad channel name"},
            {"level": "info", "channel": "error", "msg": "reserved channel name"},
            {"level": "critical", "msg": "no channel, critical"},
        ):
            out(record)
        sys.stdout.write("plain text line\n")
        sys.stdout.flush()
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            traceback.print_exc()
            sys.stderr.flush()
    if args.long_line:
        sys.stdout.write("x" * args.long_line + "\n")
        sys.stdout.write("after long line\n")
        sys.stdout.flush()
    written = 0
    while written < args.log_bytes:
        line = json.dumps({"level": "info", "channel": "broadcast", "msg": "m" * 150, "n": written})
        sys.stdout.write(line + "\n")
        written += len(line) + 1
    sys.stdout.flush()

    text = " ".join(f"{k}={v}" for k, v in status.items())
    if not args.no_ready:
        notify("READY=1", f"STATUS={text}")
    else:
        notify(f"STATUS={text}")

    usec = os.environ.get("WATCHDOG_USEC", "")
    interval = int(usec) / 4e6 if usec.isdigit() and not args.no_watchdog else None
    crash_at = time.monotonic() + args.crash_after if args.crash_after is not None else None
    while True:
        now = time.monotonic()
        if crash_at is not None and now >= crash_at:
            drain()     # not in the middle of an answer: the swap tests count failed requests
            out({"level": "error", "msg": "crashing on purpose"})
            os._exit(args.exit_code)
        waits = [3600.0]
        if interval:
            waits.append(interval)
        if crash_at is not None:
            waits.append(crash_at - now)
        time.sleep(max(min(waits), 0))
        if interval:
            notify("WATCHDOG=1")


if __name__ == "__main__":
    main()
