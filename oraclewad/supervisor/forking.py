"""Fork mode (spawn = "fork"): service children forked from a warm template process per release.

A template (oraclewad/services/template.py, run by the release's own interpreter) imports the
service stack once and freezes its GC; every child is then a copy-on-write fork of it: a few MiB
of its own instead of a whole interpreter, and milliseconds instead of most of a second to start.
The daemon hands a child exactly what an exec'd one gets (oraclewad/contract.py) over SCM_RIGHTS.

The supervision guarantees are the exec mode's, by construction: the child is a grandchild of
the template and is re-parented to the daemon (a child subreaper) before it runs anything, so
the daemon reaps it, watches it through a pidfd, kills its process group, and its death signal
(set once it is the daemon's) ties it to the daemon's trio thread. A template crash leaves its
children running; the template is started again for the next fork.

A release whose template cannot start (an older package without the module, a broken import,
a thread started at import) falls back to exec, and the reason shows in `oraclectl status`.
"""

from __future__ import annotations

import array
import collections
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from oraclewad import contract
from oraclewad.supervisor.logsink import Line, pump
from oraclewad.supervisor.process import Child, SpawnError, check_start, describe_exit, spawn

log = logging.getLogger("oraclewad.supervisor")

START_TIMEOUT = 60.0        # a template imports the whole stack; a cold machine is slow
REPLY_TIMEOUT = 10.0
RETRY_AFTER = 30.0          # after a template failed to start, exec until then
MAX_REPLY = 65536


class ForkUnavailable(Exception):
    """This spec cannot be forked now; the message says why (the runner execs instead)."""


def unforkable(argv: Sequence[str]) -> str | None:
    """Why argv cannot run from a template, or None."""
    if not argv or not os.path.isabs(argv[0]):
        return "fork needs an absolute path to a Python interpreter"
    try:
        contract.parse_python_argv(list(argv))
    except ValueError as e:
        return f"fork needs `python -m module` or `python script`: the command {e}"
    return None


class Template:
    """One template process for one interpreter."""

    def __init__(self, pool: Templates, python: str) -> None:
        self.pool = pool
        self.python = python
        self.child: Child | None = None
        self.sock: socket.socket | None = None
        self.ready = False
        self.reason = ""            # why it is not usable (empty while it is)
        self.failed_at = -1e18
        self.forks = 0
        self.starts = 0
        self.info: dict[str, object] = {}
        self._lock = trio.Lock()    # one request at a time: replies come in order
        self._stderr: collections.deque[str] = collections.deque(maxlen=6)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and not self.child.exited.is_set() else None

    async def ensure(self) -> None:
        """Ready, or ForkUnavailable with the reason."""
        if self.ready and self.child is not None and not self.child.exited.is_set():
            return
        async with self._lock:
            if self.ready and self.child is not None and not self.child.exited.is_set():
                return
            if trio.current_time() - self.failed_at < RETRY_AFTER and self.reason:
                raise ForkUnavailable(self.reason)
            await self._start()

    def _fail(self, reason: str) -> ForkUnavailable:
        self.ready = False
        self.reason = reason
        self.failed_at = trio.current_time()
        log.warning("fork template for %s: %s; its services exec instead", self.python, reason)
        self._kill()
        return ForkUnavailable(reason)

    async def _start(self) -> None:
        self._kill()
        self.starts += 1
        self._stderr.clear()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        argv = [self.python, "-P", "-m", contract.TEMPLATE_MODULE]
        if self.pool.preload is not None:
            argv += ["--only", *self.pool.preload]
        try:
            try:
                child = spawn(argv, self.pool.base_env, cwd=Path("/"), pass_fds=[theirs.fileno()])
            finally:
                theirs.close()
        except SpawnError as e:
            ours.close()
            raise self._fail(f"cannot start its template: {e}") from None
        ours.setblocking(False)
        self.child, self.sock = child, ours
        self.pool.children.add(child.pid)
        nursery = self.pool.nursery
        assert nursery is not None
        nursery.start_soon(self._pump, child, child.stdout, False)
        nursery.start_soon(self._pump, child, child.stderr, True)
        nursery.start_soon(self._watch, child)
        hello = await self._answer(ours, START_TIMEOUT, "sent nothing", "did not start")
        if not hello.get("ready"):
            raise self._fail(f"its template refused to serve: {hello.get('error', hello)}")
        self.info = hello
        self.ready = True
        self.reason = ""
        log.info("fork template for %s: pid %d ready in %.2f s (%d modules preloaded)", self.python,
                 child.pid, float(hello.get("seconds", 0.0)),  # type: ignore[arg-type]
                 len(hello.get("preloaded", ())))  # type: ignore[arg-type]

    def _why(self, e: BaseException) -> str:
        child = self.child
        last = " | ".join(self._stderr)
        status = describe_exit(child.status) if child is not None and child.status is not None else ""
        return "; ".join(part for part in (status, last, str(e) if not last else "") if part) or "no answer"

    async def _answer(self, sock: socket.socket, within: float, silent: str,
                      broken: str) -> dict[str, object]:
        """The template's next reply; a failed template (with its exit and last words) otherwise."""
        try:
            with trio.move_on_after(within):
                return await self._receive(sock)
            raise self._fail(f"its template {silent} within {within:g} s")
        except OSError as e:
            # Its socket closed under us (it exited): its exit and last words are on their way.
            await self._last_words(1.0)
            raise self._fail(f"its template {broken} ({self._why(e)})") from None
        except ValueError as e:
            raise self._fail(f"its template {broken} ({self._why(e)})") from None

    async def _last_words(self, within: float) -> None:
        child = self.child
        if child is not None:
            with trio.move_on_after(within):
                await child.exited.wait()
                await child.output_done.wait()

    async def _receive(self, sock: socket.socket) -> dict[str, object]:
        while True:
            try:
                data = sock.recv(MAX_REPLY)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            if not data:
                raise OSError("the template closed its socket")
            reply = json.loads(data)
            if not isinstance(reply, dict):
                raise ValueError("reply is not an object")
            return reply

    async def fork(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                   user: tuple[int, int] | None, pass_fds: Sequence[int]) -> Child:
        await self.ensure()
        to_close: list[int] = []
        keep: list[int] = []
        try:
            out_r, out_w = os.pipe()
            keep.append(out_r)
            to_close.append(out_w)
            err_r, err_w = os.pipe()
            keep.append(err_r)
            to_close.append(err_w)
            gate_r, gate_w = os.pipe()
            keep.append(gate_w)
            to_close.append(gate_r)
            request = {"argv": list(argv), "env": dict(env), "cwd": os.fspath(cwd) if cwd else None,
                       "user": list(user) if user else None, "daemon": os.getpid()}
            fds = array.array("i", [out_w, err_w, gate_r, *pass_fds])
            async with self._lock:
                sock = self.sock
                if sock is None or not self.ready:
                    raise ForkUnavailable(self.reason or "its template is not running")
                try:
                    sock.sendmsg([json.dumps(request).encode()],
                                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
                    for fd in to_close:
                        os.close(fd)
                    to_close.clear()
                except OSError as e:
                    raise self._fail(f"its template failed ({self._why(e)})") from None
                reply = await self._answer(sock, REPLY_TIMEOUT, "did not answer", "failed")
                if reply.get("fatal"):
                    raise self._fail(f"its template cannot fork safely: {reply.get('error')}")
                if "pid" not in reply:
                    raise ForkUnavailable(f"its template could not fork: {reply.get('error', reply)}")
                pid = int(reply["pid"])  # type: ignore[call-overload]
            try:
                # Ours already (re-parented before the template answered), and nobody else reaps it.
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                raise SpawnError(f"cannot watch forked pid {pid}: {e.strerror}") from None
            self.forks += 1
            keep.clear()
            return Child(pid, pidfd, out_r, err_r, gate=gate_w, spawn="fork")
        finally:
            for fd in (*to_close, *keep):
                os.close(fd)

    async def _pump(self, child: Child, fd: int, is_stderr: bool) -> None:
        def handle(lines: list[Line]) -> None:
            for raw, _ in lines:
                text = raw.decode("utf-8", "replace").rstrip()
                if is_stderr and text:
                    self._stderr.append(text)
                log.info("fork template %d: %s", child.pid, text)
        with trio.CancelScope(shield=True):
            try:
                await pump(fd, handle)
            except OSError:
                pass
            finally:
                child.output_closed()

    async def _watch(self, child: Child) -> None:
        with trio.CancelScope(shield=True):
            status = await child.wait()
        self.pool.children.discard(child.pid)
        if self.child is not child:
            return
        if not self.ready:
            # Still starting, or failed: _start reads its socket to the end (a refusal the template
            # sent just before exiting, then EOF) and gives the reason. Closing the socket here
            # lost that reply when this watcher woke first.
            return
        self.ready = False
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pool.closing:
            return
        self.reason = f"its template exited ({describe_exit(status)})"
        # Its children run on, untouched (they are the daemon's). Warm up a new one now, so the
        # next restart does not wait for the imports.
        log.warning("fork template %d for %s exited (%s): starting a new one; running children are "
                    "not affected", child.pid, self.python, describe_exit(status))
        assert self.pool.nursery is not None
        self.pool.nursery.start_soon(self._restart)

    async def _restart(self) -> None:
        with contextlib.suppress(ForkUnavailable):
            await self.ensure()

    def _kill(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.child is not None and not self.child.exited.is_set():
            self.child.signal_group(signal.SIGKILL)


class Templates:
    """The templates of one supervisor, by interpreter; run() keeps them and stops them at the end."""

    def __init__(self, base_env: Mapping[str, str], children: set[int],
                 preload: Sequence[str] | None = None) -> None:
        """preload: the modules a template imports (None: its own default, the service stack)."""
        self.base_env = dict(base_env)
        self.children = children
        self.preload = tuple(preload) if preload is not None else None
        self.nursery: trio.Nursery | None = None
        self.closing = False
        self._by_python: dict[str, Template] = {}

    def template(self, python: str) -> Template:
        t = self._by_python.get(python)
        if t is None:
            t = self._by_python[python] = Template(self, python)
        return t

    @property
    def all(self) -> list[Template]:
        return list(self._by_python.values())

    async def fork(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                   user: tuple[int, int] | None, pass_fds: Sequence[int]) -> Child:
        """A forked child, as spawn() would have started it; ForkUnavailable: exec instead."""
        why = unforkable(argv)
        if why is not None:
            raise ForkUnavailable(why)
        if self.nursery is None or self.closing:
            raise ForkUnavailable("the daemon is shutting down")
        check_start(argv, env, cwd)
        _, kind, target, _ = contract.parse_python_argv(list(argv))
        if kind == "script":
            script = Path(target) if cwd is None else Path(cwd) / target
            if not script.is_file():
                raise SpawnError(f"{script} is not a file")
        return await self.template(argv[0]).fork(argv, env, cwd, user, pass_fds)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.nursery = None

    async def stop(self) -> None:
        """Hang up on every template (it exits at EOF); SIGKILL what is left after a second."""
        self.closing = True
        for t in self.all:
            if t.sock is not None:
                t.sock.close()
                t.sock = None
        with trio.move_on_after(1.0):
            for t in self.all:
                if t.child is not None:
                    await t.child.exited.wait()
        for t in self.all:
            t._kill()
            if t.child is not None:
                with trio.CancelScope(shield=True):
                    await t.child.exited.wait()
