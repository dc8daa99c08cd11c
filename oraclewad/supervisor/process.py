"""One child process: spawned in its own session from the trio thread, watched through a pidfd.

Why posix_spawn: it runs on the calling (trio) thread with glibc's vfork-style clone, so the
`setpriv --pdeathsig KILL` death signal is tied to a thread that lives as long as the daemon
(ARCHITECTURE.md, "Child process contract"), it is as cheap as vfork with a large parent, and its
file actions can place the contract's descriptors at fd 3.., which subprocess.Popen cannot do
without preexec_fn. setpriv also switches to the tenant's uid/gid, drops every capability and
sets no_new_privs, so the whole privilege change happens in the exec'd helper, not in Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
ENV = shutil.which("env") or "/usr/bin/env"
LISTEN_FD = 3
# CAP_SETUID and CAP_SETGID (capability numbers 7 and 6), and CAP_SETPCAP (8) for the bounding set.
_CAP_SETGID, _CAP_SETUID, _CAP_SETPCAP = 6, 7, 8
# Every named signal back to its default in the child: Python ignores SIGPIPE and SIGXFSZ, and
# an ignored disposition would survive exec.
_DEFAULT_SIGNALS = frozenset(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP}


class SpawnError(Exception):
    """The child could not be started at all; the message is for the operator."""


class Child:
    """A spawned process and its process group (pgid == pid: it leads its own session)."""

    def __init__(self, pid: int, pidfd: int, stdout: int, stderr: int, *, gate: int | None = None,
                 spawn: str = "exec") -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.stdout = stdout        # read ends; the log pumps take ownership
        self.stderr = stderr
        self.status: int | None = None
        self.exited = trio.Event()
        self.output_done = trio.Event()
        self._open_outputs = 2
        self.spawn = spawn          # "exec" or "fork" (oraclewad/supervisor/forking.py)
        self._gate = gate           # fork mode: the child waits for one byte here before it runs

    def go(self) -> None:
        """Let a forked child run (the caller has registered its pid); a no-op for exec'd ones."""
        gate, self._gate = self._gate, None
        if gate is not None:
            with contextlib.suppress(OSError):
                os.write(gate, b"1")
            os.close(gate)

    def signal_group(self, sig: int) -> None:
        """Signal every process in the child's group; a group already gone is not an error."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def group_alive(self) -> bool:
        """Whether any process (zombies included) is left in the child's group."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def wait(self) -> int:
        """Wait for the main process to exit, kill what is left of its group, reap it. Call once."""
        await trio.lowlevel.wait_readable(self.pidfd)
        # Still a zombie here, so the pid (and with it the group id) cannot have been reused:
        # killing the group now cannot hit a stranger. Leftover grandchildren die with the
        # main process; our subreaper collects them.
        self.signal_group(signal.SIGKILL)
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = -1     # someone else reaped it (a waitpid(-1) elsewhere): status lost
        finally:
            os.close(self.pidfd)
            if self._gate is not None:
                os.close(self._gate)
                self._gate = None
        self.status = status
        self.exited.set()
        return status

    def output_closed(self) -> None:
        """Called by each log pump at EOF: once both are done, all output has been written."""
        self._open_outputs -= 1
        if self._open_outputs <= 0:
            self.output_done.set()


def seal_inherited_fds() -> list[int]:
    """Mark close-on-exec every fd above 2 that is not yet: those the daemon itself inherited.

    posix_spawn, unlike Popen(close_fds=True), passes on every fd without close-on-exec. Python
    creates all its fds close-on-exec, so only fds inherited from our own parent are at risk;
    sealing them once at startup keeps them out of every child.
    """
    sealed = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        with contextlib.suppress(OSError):     # the listdir's own fd is gone by now
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                sealed.append(fd)
    return sealed


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_switch_users() -> bool:
    """Whether children can be started as other users (root, or CAP_SETUID + CAP_SETGID)."""
    caps = _effective_caps()
    return bool(caps & (1 << _CAP_SETUID)) and bool(caps & (1 << _CAP_SETGID))


def identity_args(uid: int, gid: int) -> list[str]:
    """setpriv options: become uid/gid with no supplementary groups and no capabilities at all."""
    args = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--ambient-caps=-all", "--no-new-privs"]
    if _effective_caps() & (1 << _CAP_SETPCAP):
        args.append("--bounding-set=-all")
    return args


def _leaked_fds(keep: set[int]) -> list[int]:
    """Inheritable fds of ours that a child would get by accident (hypercorn marks its listening
    sockets inheritable, a library may open one without O_CLOEXEC): closed in the child."""
    leaked = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in keep:
            continue
        with contextlib.suppress(OSError):     # the listdir's own fd is gone by now
            if os.get_inheritable(fd):
                leaked.append(fd)
    return leaked


def describe_exit(status: int | None) -> str:
    """A wait status for people: "exit 1", "killed by SIGKILL"."""
    if status is None:
        return ""
    if status == -1:
        return "exit status unknown"
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")


def _check_program(argv0: str, env: Mapping[str, str], cwd: Path | None) -> None:
    # setpriv would report a missing program only as "exit 127" on stderr; say it plainly.
    if "/" not in argv0:
        if shutil.which(argv0, path=env.get("PATH", os.defpath)) is None:
            raise SpawnError(f"program {argv0!r} not found on PATH ({env.get('PATH', os.defpath)})")
        return
    path = Path(argv0) if cwd is None else Path(cwd) / argv0
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SpawnError(f"{path} is not an executable file")


def check_start(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> None:
    """SpawnError, in words, for what would make a start fail at once (both spawn modes)."""
    _check_program(argv[0], env, cwd)
    if cwd is not None and not Path(cwd).is_dir():
        raise SpawnError(f"working directory {cwd} does not exist")


def spawn(argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None,
          listen_fd: int | None = None, pass_fds: Sequence[int] = (),
          user: tuple[int, int] | None = None) -> Child:
    """Start argv in a new session with stdin=/dev/null, stdout/stderr piped, and pass_fds at
    fd 3, 4, ... (listen_fd: one socket at fd 3); no other descriptor reaches the child.

    user: (uid, gid) to run as, with no supplementary groups, capabilities or new privileges.
    """
    if listen_fd is not None:
        pass_fds = (listen_fd, *pass_fds)
    if not os.access(SETPRIV, os.X_OK):
        raise SpawnError(f"{SETPRIV} is missing: install util-linux (setpriv ties children to the daemon)")
    check_start(argv, env, cwd)
    to_close: list[int] = []    # the parent's copies of what the child gets
    keep: list[int] = []        # the read ends, ours unless the spawn fails
    try:
        out_r, out_w = os.pipe()    # close-on-exec; the dup2 below clears it on the child's 1 and 2
        keep.append(out_r)
        to_close.append(out_w)
        err_r, err_w = os.pipe()
        keep.append(err_r)
        to_close.append(err_w)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        to_close.append(devnull)

        def high(fd: int) -> int:
            # Sources below 10 could be clobbered by an earlier dup2 onto 0..3 (a daemon started
            # with closed std fds hands out low numbers): use a high copy for the spawn.
            if fd >= 10:
                return fd
            copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            to_close.append(copy)
            return copy

        actions = [(os.POSIX_SPAWN_DUP2, high(devnull), 0),
                   (os.POSIX_SPAWN_DUP2, high(out_w), 1),
                   (os.POSIX_SPAWN_DUP2, high(err_w), 2)]
        for i, fd in enumerate(pass_fds):
            actions.append((os.POSIX_SPAWN_DUP2, high(fd), LISTEN_FD + i))
        targets = set(range(LISTEN_FD + len(pass_fds)))
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _leaked_fds(targets)]
        prefix = [SETPRIV, "--pdeathsig", "KILL"]
        if user is not None:
            prefix += identity_args(*user)
        prefix.append("--")
        if cwd is not None:
            # posix_spawn has no chdir action in Python; coreutils env does it in one cheap exec.
            prefix += [ENV, "-C", str(cwd), "--"]
        try:
            pid = os.posix_spawn(SETPRIV, [*prefix, *argv], dict(env), file_actions=actions,
                                 setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
        except OSError as e:
            raise SpawnError(f"cannot start {argv[0]}: {e.strerror}") from e
    except BaseException:
        for fd in keep:
            os.close(fd)
        raise
    finally:
        for fd in to_close:
            os.close(fd)
    # pidfd_open works on a zombie too, and nobody else reaps our pids, so this cannot race.
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        # Out of fds: a child we cannot watch must not run unsupervised.
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(out_r)
        os.close(err_r)
        raise SpawnError(f"cannot watch {argv[0]}: {e.strerror}") from e
    return Child(pid, pidfd, out_r, err_r)
