"""`python -m oraclewad.provision.guard`: stops the embedded servers when the daemon dies.

The embedded PostgreSQL and Redis daemonize (pg_ctl, `daemonize yes`), so the kernel's
parent-death signal cannot reach them. This small process can: the daemon starts it with a
pipe as stdin and writes one line `NAME PID SIGNAL COMMAND-WORD` whenever a server (re)starts.
The daemon never closes the pipe while it runs; when it dies (even by SIGKILL) the kernel closes
it, and the guard sends each server its stop signal (PostgreSQL: SIGINT, a fast shutdown that
loses nothing committed; Redis: SIGTERM, which saves), then SIGKILL to whatever still runs after
KILL_AFTER seconds (a Redis whose folder was deleted refuses SIGTERM: it cannot save).

After a normal shutdown the daemon has stopped the servers itself; the guard finds them gone
and exits. It runs in its own session, so a Ctrl-C meant for the daemon does not reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

KILL_AFTER = 3.0


def _matches(pid: int, word: str) -> bool:
    """The pid is alive (not a zombie) and still the server it was (pids are reused)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and word.encode() in cmdline


def stop_all(servers: dict[str, tuple[int, int, str]], kill_after: float = KILL_AFTER) -> None:
    live = {name: entry for name, entry in servers.items() if _matches(entry[0], entry[2])}
    for pid, signum, _ in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + kill_after
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = {n: e for n, e in live.items() if _matches(e[0], e[2])}
    for pid, _, _ in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    servers: dict[str, tuple[int, int, str]] = {}
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit():
            name, pid, sig, word = parts
            servers[name] = (int(pid), int(getattr(signal, f"SIG{sig}", signal.SIGTERM)), word)
    stop_all(servers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
