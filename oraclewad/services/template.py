"""The fork-mode template: one per release, started and supervised by the daemon (spawn = "fork").

    python -P -m oraclewad.services.template [MODULE ...]

It imports the service stack (and any MODULE named), freezes the garbage collector, then waits on
fd 3 (a SOCK_SEQPACKET socket to the daemon, see oraclewad/contract.py) for fork requests. Each
child is a copy-on-write copy of the warm interpreter: it starts in milliseconds and shares the
imported code and data with the template and its siblings (gc.freeze keeps the collector of a
child from touching, and so copying, the template's objects).

The template runs as the daemon's user and never runs tenant code itself. It forks only while it
has no thread and no connection (checked before every fork: a forked thread-holding process can
deadlock on a lock some other thread held). A child is forked ahead of its request (a spare,
re-parented to the daemon, a child subreaper, once the intermediate process exits), then, in order:

    signals and mask as a fresh interpreter has them, one empty trio.run (its pages copied ahead)
    -> waits for its request on its own socket (the template hands each request to its spare,
    and forks the next spare once no request came for SPARE_AFTER) -> setsid -> the template
    gives the daemon its pid -> waits for the daemon's go on the gate fd (its pid is registered
    now) ->
    PR_SET_PDEATHSIG(SIGKILL), checks its parent is the daemon -> fds 0-2 and 3.. in place,
    every other fd closed -> drops to the tenant's uid/gid (no supplementary groups,
    capabilities or new privileges) -> environment, argv, working directory -> runs the module
    or script as __main__ (its own trio.run).

Until its request a spare is in the template's process group (it dies with it) and exits when
the template hangs up.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import gc
import importlib
import io
import json
import os
import runpy
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from oraclewad import contract

# The stack every service imports; missing ones are skipped (an older or smaller release).
# httpcore and certifi are httpx's lazy imports (its first client), encodings.idna the socket
# module's (a connect by host name): imported after the fork, a module is private to each child,
# and so is every page of the import system's caches it touches (a tenant child's private memory
# was 16.7 MiB with them, 8.8 MiB without).
PRELOAD = (
    "trio", "hypercorn.trio", "starlette.applications", "httpx", "httpcore", "certifi",
    "encodings.idna", "psycopg", "psycopg_pool", "redis", "prometheus_client", "oraclewad.migrations",
    "oraclewad.services.runtime", "oraclewad.services.recovery.app", "oraclewad.services.broadcast.app",
)
# Built once here and shared by every child (copy-on-write) instead of once per child.
# The config schema's type hints, too (resolving them compiles every annotation string).
WARM = (("oraclewad.services.evolution", "shared_tls"), ("oraclewad.childconfig", "warm"))
MAX_REQUEST = 1 << 20
SPARE_AFTER = 0.5      # seconds without a request before the next child is forked ahead
MAX_FDS = 64

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_SETPCAP = 8

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _clear_caps() -> None:
    """Empty effective, permitted and inheritable sets (capset, _LINUX_CAPABILITY_VERSION_3)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid with no supplementary groups, no capabilities (bounding set included when we
    may drop it) and no_new_privs: what `setpriv` does for an exec'd child."""
    if _effective_caps() & (1 << _CAP_SETPCAP):
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            _prctl(PR_CAPBSET_DROP, cap)
    if os.getuid() == 0 or os.geteuid() == 0 or (uid, gid) != (os.getuid(), os.getgid()):
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    with contextlib.suppress(OSError):          # kernels before 4.3 have no ambient set
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _clear_caps()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getgroups():
        raise OSError("the uid/gid switch did not take")


PR_SET_MM = 35
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11
_environ_block: ctypes.Array[ctypes.c_char] | None = None     # kept alive: the kernel points at it


def publish_environ(env: dict[str, str]) -> None:
    """Point /proc/<pid>/environ at the child's own environment (it would show the template's).
    Needs CAP_SYS_RESOURCE, so it is done before the privileges go; without it, nothing changes."""
    global _environ_block
    block = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()) or b"\0"
    _environ_block = ctypes.create_string_buffer(block, len(block))
    start = ctypes.addressof(_environ_block)
    end = start + len(block)
    # The kernel checks start <= end after each of the two calls: move the side that keeps it so.
    for order in ((PR_SET_MM_ENV_END, PR_SET_MM_ENV_START), (PR_SET_MM_ENV_START, PR_SET_MM_ENV_END)):
        try:
            for which in order:
                if _libc.prctl(PR_SET_MM, which, ctypes.c_ulong(end if which == PR_SET_MM_ENV_END else start),
                               ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_SET_MM)")
            return
        except OSError:
            continue


class Refused(Exception):
    """The template cannot fork safely (a thread or a connection exists): it must be replaced."""


def check_forkable(ctl_fd: int, passed: Sequence[int] = ()) -> None:
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1 or threading.active_count() != 1:
        raise Refused(f"the template has {threads} threads: forking would copy their locks")
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == ctl_fd or fd in passed:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise Refused(f"the template holds a socket (fd {fd}): children would share it")


class Job:
    """What a freshly forked child runs once it has unwound out of the template's loop."""

    def __init__(self, request: dict[str, Any], fds: list[int], ctl: socket.socket) -> None:
        self.request = request
        self.fds = fds
        self.ctl = ctl


def _recv_request(ctl: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    fds = array.array("i")
    msg, ancdata, flags, _ = ctl.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    if not msg:
        for fd in fds:
            os.close(fd)
        return None                     # the daemon closed its end: we are done
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("request truncated")
    return json.loads(msg), list(fds)


def _reply(ctl: socket.socket, obj: dict[str, Any]) -> None:
    ctl.send(json.dumps(obj).encode())


class Spare:
    """A child forked before its request, waiting for it on its own socket. A restart then costs a
    hand-over (one message each way) instead of the double fork (about 10 ms, and the intermediate
    process's teardown competing for the CPU) that made the next child."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def hand_over(self, request: dict[str, Any], fds: list[int]) -> int | None:
        """Give the spare its request; its pid once it leads its own session (None: it is gone)."""
        try:
            self.sock.sendmsg([json.dumps(request).encode()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
            answer = self.sock.recv(16)
        except OSError:
            answer = b""
        self.sock.close()
        return self.pid if answer == b"ok" else None


def _fork_spare(ctl: socket.socket, held: Sequence[int] = ()) -> Spare | Job:
    """Double fork a spare. In the spare, once its request came: its Job. In the template: the
    Spare. held: a request's fds the template holds now (the spare closes its copies)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        check_forkable(ctl.fileno(), (ours.fileno(), theirs.fileno(), *held))
        pid = _fork()
    except BaseException:
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        # Nothing of the template's is the spare's to keep but its stdio (until the request).
        ours.close()
        os.close(ctl.detach())
        for fd in held:
            os.close(fd)
        return _await_request(theirs)
    theirs.close()
    if pid is None:
        ours.close()
        raise OSError("the spare died before it reported its pid")
    return Spare(pid, ours)


def _await_request(sock: socket.socket) -> Job:
    """In a spare: its request, or exit when the template hangs up (it stopped or died). First
    the child's start that needs no request: signals as a fresh interpreter has them, and one
    empty trio.run, so the pages of the template's that every child's start writes to (trio's
    run machinery above all) are copied now rather than after the request (about 600 of a
    start's 3,100 page faults, each a few microseconds on a VM)."""
    _fresh_signals()
    with contextlib.suppress(Exception):
        _warm_trio()
    try:
        got = _recv_request(sock)
    except (OSError, ValueError):
        got = None
    if got is None:
        os._exit(0)
    request, fds = got
    # Its own session and group (pgid == pid) before the template gives its pid to the daemon,
    # which signals the group. Until now it was in the template's group: killed with it.
    os.setsid()
    sock.send(b"ok")
    return Job(request, fds, sock)


def _quiet(ctl: socket.socket, seconds: float) -> bool:
    """No request arrives within `seconds` (or the daemon hung up)."""
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    return not poller.poll(seconds * 1000)


def _warm_trio() -> None:
    trio = sys.modules.get("trio")
    if trio is not None:        # a template that preloaded it
        trio.run(trio.sleep, 0)


def _fork() -> int | None:
    """Double fork: 0 in the grandchild (re-parented to the daemon once the intermediate exits),
    its pid in the template (None if it died before telling it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()                 # anything created since the last freeze, too
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        # The intermediate: fork the child and exit at once, so that it is re-parented.
        try:
            if os.fork() == 0:
                os.close(r)
                os.write(w, struct.pack("i", os.getpid()))
                os.close(w)
                return 0
        except BaseException:
            pass
        os._exit(0)
    os.close(w)
    data = b""
    try:
        while len(data) < 4:
            chunk = os.read(r, 4 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    return struct.unpack("i", data)[0] if len(data) == 4 else None


def serve(ctl: socket.socket) -> Job | None:
    """Answer fork requests until the daemon hangs up (None). Returns a Job only in a child.
    The child of the next request is forked ahead (a spare) once no request came for
    SPARE_AFTER: forking it (and its warm-up) right after an answer took the CPU from the child
    just started, on 2 cores; requests back to back (a mass start) are forked each for itself."""
    spare: Spare | None = None
    while True:
        if spare is None and _quiet(ctl, SPARE_AFTER):
            # A failure here is met again (and answered) at the request, which forks anew.
            with contextlib.suppress(Refused, OSError):
                made = _fork_spare(ctl)
                if isinstance(made, Job):
                    return made     # the spare, with its request: leave the template's stack
                spare = made
        got = _recv_request(ctl)
        if got is None:
            if spare is not None:
                spare.sock.close()      # it exits at EOF
            return None
        request, fds = got
        result: int | str | None
        try:
            if len(fds) < 3:
                raise ValueError("a request needs stdout, stderr and gate fds")
            result = spare.hand_over(request, fds) if spare is not None else None
            spare = None
            if result is None:      # no spare, or it died meanwhile: fork one for this request
                made = _fork_spare(ctl, fds)
                if isinstance(made, Job):
                    return made
                result = made.hand_over(request, fds)
        except Refused as e:
            _reply(ctl, {"error": str(e), "fatal": True})
            raise
        except (OSError, ValueError) as e:
            result = f"fork failed: {e}"
        for fd in fds:
            os.close(fd)
        if isinstance(result, int):
            _reply(ctl, {"pid": result})
        else:
            _reply(ctl, {"error": result or "the child died before it reported its pid"})


def _fresh_signals() -> None:
    """Dispositions and mask as a new interpreter has them (an exec'd child gets the same)."""
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _place_fds(fds: list[int]) -> None:
    """fds = [stdout, stderr, gate, pass...] -> 0 /dev/null, 1, 2, 3.. pass; close everything else."""
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    wanted = [devnull, fds[0], fds[1], *fds[3:]]
    floor = max([*wanted, 2]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in wanted]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
    os.closerange(len(high), 1 << 20)    # close_range(2): the template's fds and the copies above


def _fresh_stdio() -> None:
    # Unbuffered as with PYTHONUNBUFFERED=1: the daemon's log pipes must get every line at once.
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)


def become(job: Job) -> tuple[str, str, list[str], bool]:
    """Set the child up (see the module docstring); returns what to run."""
    req = job.request
    daemon = int(req["daemon"])
    gate = job.fds[2]
    go = os.read(gate, 1)       # the daemon has registered our pid (or died: EOF)
    if not go:
        os._exit(contract.EX_TEMPLATE)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != daemon:
        os._exit(contract.EX_TEMPLATE)  # the daemon died before the death signal was set
    job.ctl.detach()                    # the fd is closed with the others; the object must not close a reuse
    _place_fds(job.fds)
    _fresh_stdio()
    gc.enable()
    publish_environ(req["env"])
    user = req.get("user")
    if user is not None:
        drop_privileges(int(user[0]), int(user[1]))
        # A credential change clears the death signal (prctl(2)): set it again, and check again
        # that the daemon did not die in between.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != daemon:
            os._exit(contract.EX_TEMPLATE)
    os.environ.clear()
    os.environ.update(req["env"])
    if req.get("cwd"):
        os.chdir(req["cwd"])
    opts, kind, target, args = contract.parse_python_argv(req["argv"])
    # What ps/top show as its name (its command line stays the template's): the service's.
    env = req["env"]
    name = "/".join(v for v in (env.get(contract.ENV_TENANT), env.get(contract.ENV_SERVICE)) if v)
    comm = ctypes.create_string_buffer((name or target.rpartition(".")[2]).encode()[:15])
    with contextlib.suppress(OSError):
        _prctl(PR_SET_NAME, ctypes.addressof(comm))
    isolated = any(o in ("-P", "-I") or (o[1:2] != "-" and ("P" in o or "I" in o)) for o in opts)
    return kind, target, args, isolated


def run_job(job: Job) -> None:
    try:
        kind, target, args, isolated = become(job)
    except Exception as e:      # set-up failed: nothing of the tenant's ran
        os.write(2, f"oraclewad template: cannot set up the child: {e}\n".encode())
        os._exit(contract.EX_TEMPLATE)
    if kind == "module":
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *args]
        if not isolated:
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        runpy.run_path(target, run_name="__main__")


def preload(modules: list[str], *, default: bool = True) -> list[str]:
    loaded = []
    for name in dict.fromkeys([*(PRELOAD if default else ()), *modules]):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        loaded.append(name)
    for module, function in WARM if default else ():
        warm = getattr(sys.modules.get(module), function, None)
        if warm is not None:    # an older release may lack it
            warm()
    return loaded


def main() -> None:
    gc.disable()        # no collections (and so no freed holes in shared pages) until the freeze
    started = time.monotonic()
    ctl = socket.socket(fileno=contract.TEMPLATE_FD)
    args = sys.argv[1:]
    only = bool(args) and args[0] == "--only"      # just these modules, not the default stack
    loaded = preload(args[1:] if only else args, default=not only)
    gc.collect()
    gc.freeze()
    try:
        check_forkable(ctl.fileno())
    except Refused as e:
        _reply(ctl, {"error": str(e), "fatal": True})
        raise SystemExit(f"oraclewad template: {e}") from None
    _reply(ctl, {"ready": True, "pid": os.getpid(), "preloaded": loaded,
                 "seconds": round(time.monotonic() - started, 3)})
    job = serve(ctl)
    if job is None:
        return
    run_job(job)     # in a child only: the service, its exit code is ours


if __name__ == "__main__":
    main()
