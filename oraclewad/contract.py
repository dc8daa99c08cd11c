"""The child-process contract, shared by the daemon (supervisor) and the services. Stdlib only.

A supervised tenant service receives everything it needs as an open file descriptor, so it
needs no access to any file or folder of the daemon:

    fd 0          /dev/null
    fd 1, 2       pipes to the daemon's log sink (stdout: JSON lines, stderr: plain text)
    fd 3, 4, ...  listening sockets, sd_listen_fds style: LISTEN_FDS=<n>, LISTEN_FDNAMES=http:admin
                  ("http": the public TCP socket; "admin": a unix socket for /healthz, /metrics)
    fd 3 + n      the JSON config, a sealed read-only memfd; its number is in OWA_CONFIG_FD

and nothing else (the supervisor closes every other descriptor in the child). Notifications go
to NOTIFY_SOCKET (an abstract unix socket, reachable by every uid); the daemon accepts a
datagram only when the kernel-stamped pid *and* uid are those of the child it supervises.

Standalone runs (no daemon) name a config file in OWA_CONFIG and an admin socket path in
OWA_ADMIN_SOCKET instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# ---- environment (every name the daemon, oraclewad's CLI and the services read or set)
ENV_TENANT = "OWA_TENANT"
ENV_SERVICE = "OWA_SERVICE"
ENV_CONFIG_FD = "OWA_CONFIG_FD"          # supervised: the config's fd number
# The config file: a standalone service's JSON; for `oraclewad`/`oraclectl`, the daemon's TOML.
# The supervisor never passes it on to a child.
ENV_CONFIG = "OWA_CONFIG"
ENV_ADMIN_SOCKET = "OWA_ADMIN_SOCKET"    # standalone: where to bind the admin socket
ENV_NOTIFY = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
ENV_LISTEN_FDS = "LISTEN_FDS"
ENV_LISTEN_PID = "LISTEN_PID"            # never set by our supervisor (the pid is unknown before spawn)
ENV_LISTEN_FDNAMES = "LISTEN_FDNAMES"
# Set ("1") for the new process of a release swap: it serves its admin socket and sends READY, but
# takes no connection from the shared public socket until the daemon POSTs ADMIN_ACCEPT_PATH on its
# admin socket (at promotion). A candidate that crashes during its health gate so drops no client.
ENV_HOLD_ACCEPT = "OWA_HOLD_ACCEPT"
ADMIN_ACCEPT_PATH = "/_swap/accept"

# ---- descriptors
LISTEN_FDS_START = 3
HTTP_FD_NAME = "http"
ADMIN_FD_NAME = "admin"

# ---- exit codes (sysexits.h), the supervisor reports them by name
EX_OK = 0
EX_SOFTWARE_BUG = 1      # an uncaught exception: the traceback is on stderr
EX_UNAVAILABLE = 69      # PostgreSQL or Redis unreachable at start
EX_SOFTWARE = 70         # the release lacks a part it needs
EX_OSERR = 71            # cannot listen (port in use, bad admin socket)
EX_CONFIG = 78           # invalid config or environment, or a database schema mismatch

EXIT_MEANINGS = {
    EX_SOFTWARE_BUG: "crashed (traceback in error.log)",
    EX_UNAVAILABLE: "PostgreSQL or Redis unreachable",
    EX_SOFTWARE: "release incomplete",
    EX_OSERR: "cannot listen",
    EX_CONFIG: "invalid config or schema mismatch",
}

# ---- notify datagrams
MAX_NOTIFY_DATAGRAM = 4096
# A running service re-runs its readiness checks every HEALTH_INTERVAL seconds and sends
# HEALTH=ok or HEALTH=unhealthy (with HEALTH_CHECK=<the failing checks, one line>) whenever the
# outcome changes; the daemon shows an unhealthy service as state `unhealthy`, not `running`.
HEALTH = "HEALTH"
HEALTH_CHECK = "HEALTH_CHECK"
HEALTH_OK = "ok"
HEALTH_UNHEALTHY = "unhealthy"
HEALTH_INTERVAL = 2.0


def watchdog_usec(env: Mapping[str, str]) -> int | None:
    """sd_watchdog_enabled: WATCHDOG_USEC when the watchdog is on for this process, else None.
    ValueError (naming the variable) when it is not a positive integer."""
    usec, pid = env.get(ENV_WATCHDOG_USEC), env.get(ENV_WATCHDOG_PID)
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        raise ValueError(f"{ENV_WATCHDOG_USEC}: {usec!r} is not an integer number of microseconds") from None
    if value <= 0:
        raise ValueError(f"{ENV_WATCHDOG_USEC}: must be positive")
    return value


# A watched process pings at a third of the timeout (systemd recommends half; a third leaves
# room for a busy event loop).
WATCHDOG_PINGS_PER_TIMEOUT = 3

# ---- unix sockets
MAX_UNIX_PATH = 107      # sun_path is 108 bytes, NUL included


def unix_path_problem(path: str) -> str | None:
    """Why `path` cannot be a unix socket's address ("... bytes, unix sockets allow 107"), or None."""
    size = len(os.fsencode(path))
    return f"path is {size} bytes, unix sockets allow {MAX_UNIX_PATH}" if size > MAX_UNIX_PATH else None


def unix_address(path: str) -> str:
    """A leading '@' names the abstract namespace (NOTIFY_SOCKET's convention)."""
    return "\0" + path[1:] if path.startswith("@") else path


def parse_notify(data: bytes) -> dict[str, str]:
    """KEY=VALUE lines (sd_notify format); later keys win, junk lines are skipped."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


def listen_fd_names(names: list[str]) -> dict[str, int]:
    """LISTEN_FDNAMES entries -> fd numbers."""
    return {name: LISTEN_FDS_START + i for i, name in enumerate(names)}


# ---- fork mode: the template process (oraclewad/services/template.py) ---------------------------
# A per-release template imports the service stack once, freezes the GC and forks a child per
# request on a SOCK_SEQPACKET socket (fd 3 of the template). One JSON object per datagram:
#   template -> daemon, once:  {"ready": true, "pid": P, "preloaded": [...], "seconds": S}
#   daemon -> template:        {"argv": [...], "env": {...}, "cwd": str|null, "user": [uid, gid]|null,
#                               "daemon": daemon_pid} + SCM_RIGHTS [stdout, stderr, gate, fd3, fd4...]
#   template -> daemon:        {"pid": child_pid} or {"error": "why"}
# The child is a grandchild of the template (double fork): it is re-parented to the daemon (a
# child subreaper) at once, so its exit is the daemon's to reap and a template crash spares it.
# It waits for one byte on `gate` (the daemon has registered its pid), then sets its death signal.
TEMPLATE_MODULE = "oraclewad.services.template"
TEMPLATE_FD = 3
EX_TEMPLATE = 125        # the forked child could not set itself up (the reason is on stderr)

# Interpreter options that take a separate argument.
_PY_OPTS_WITH_ARG = frozenset({"-X", "-W", "--check-hash-based-pycs"})


def parse_python_argv(argv: list[str] | tuple[str, ...]) -> tuple[list[str], str, str, list[str]]:
    """[python, opts..., -m mod | script, args...] -> (opts, "module"|"script", target, args).
    ValueError when argv is not that shape (-c, stdin, a non-python program)."""
    opts: list[str] = []
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "-m" and i + 1 < len(argv):
            return opts, "module", argv[i + 1], list(argv[i + 2:])
        if a.startswith("-m") and len(a) > 2:
            return opts, "module", a[2:], list(argv[i + 1:])
        if a in _PY_OPTS_WITH_ARG:
            opts += argv[i:i + 2]
            i += 2
            continue
        if a == "-c" or a.startswith("-c") or a == "-" or a == "--":
            raise ValueError("runs code from -c or stdin, not a module or script")
        if a.startswith("-"):
            opts.append(a)
            i += 1
            continue
        return opts, "script", a, list(argv[i + 1:])
    raise ValueError("names no module (-m) or script")
