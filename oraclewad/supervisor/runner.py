"""One task per service: spawn, watch, restart with backoff, stop; the service's state machine.

    stopped -> starting -> running -> stopping -> stopped
                  |           |
                  +-----------+--> (unexpected exit, start deadline, watchdog)
                                   backoff | degraded -> starting ...

The runner acts on one "poke" event: notifications, commands and the child's exit all set it,
and the loop re-reads the runner's fields. Deadlines (start, watchdog, backoff reset) are
trio.current_time() values, so a MockClock drives them in tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import random
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from oraclewad import contract
from oraclewad.settings import LogSettings, Policy
from oraclewad.supervisor.backoff import Backoff
from oraclewad.supervisor.forking import ForkUnavailable, Templates
from oraclewad.supervisor.listeners import BindError, Listeners
from oraclewad.supervisor.logsink import Compressor, Line, LogSink, LogWatchers, pump
from oraclewad.supervisor.notify import NotifyServer
from oraclewad.supervisor.process import Child, SpawnError, describe_exit, spawn
from oraclewad.supervisor.spec import ProcessSpec, admin_socket_path
from oraclewad.supervisor.status import (
    BACKOFF,
    DEGRADED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    UNHEALTHY,
    UP,
    ServiceEvent,
    ServiceStatus,
)

log = logging.getLogger("oraclewad.supervisor")

SETTLED = frozenset({RUNNING, UNHEALTHY, BACKOFF, DEGRADED, STOPPED})
OUTPUT_DRAIN = 1.0      # seconds to let the pumps write a dead child's last lines
MAX_MESSAGE = 500


class SwapAborted(Exception):
    """A staged process cannot take over (the service changed, stopped or lost its process)."""


@dataclass(eq=False)
class Candidate:
    """A second process of a running service, started for a swap on the same listening socket.

    It gets its own admin socket and config file (the other of the runner's two slots), so the old
    process keeps serving untouched until `promote` hands the service over.
    """

    spec: ProcessSpec
    child: Child
    slot: int
    gen: int
    admin_path: Path | None
    started: float                                  # trio.current_time() at spawn
    ready: trio.Event = field(default_factory=trio.Event)
    last_ping: float = 0.0
    message: str = ""
    taken: trio.Event = field(default_factory=trio.Event)

    @property
    def exit(self) -> str:
        return describe_exit(self.child.status) if self.child.status is not None else ""


@dataclass
class Context:
    """What every runner shares, owned by the Supervisor."""

    run_dir: Path
    logs: LogSettings
    compressor: Compressor
    log_watchers: LogWatchers
    listeners: Listeners
    notify: NotifyServer
    children: set[int]                      # pids spawned by runners (the reaper leaves them alone)
    base_env: dict[str, str]
    rng: random.Random
    emit: Callable[[ServiceEvent], None]
    runner_done: Callable[[Runner], None]
    templates: Templates
    # A spawn blocks the loop for about a millisecond (the vfork waits for setpriv's exec); taking
    # turns puts a scheduling round, and so an I/O poll, between two spawns of a mass start.
    spawn_turn: trio.Lock = field(default_factory=trio.Lock)
    # How many services may be between spawn and READY=1 at once. A cold start of 200 children
    # on 2 cores otherwise has every one of them miss its start deadline and start over.
    start_slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(8))


def sealed_memfd(text: str) -> int:
    """The config as an anonymous, sealed, read-only file: it never touches a disk or a folder,
    and the child (or anyone it hands it to) cannot change what the next reader sees."""
    fd = os.memfd_create("oraclewa-config", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_tmp(path: Path, user: tuple[int, int] | None) -> None:
    """A 0700 folder owned by the service's user, in a parent others can cross but not list."""
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    pst = os.lstat(parent)
    if not stat.S_ISDIR(pst.st_mode) or pst.st_uid != os.geteuid():
        raise OSError(f"{parent} is not a folder of the daemon's user: remove it")
    os.chmod(parent, 0o711)
    uid, gid = user if user is not None else (os.geteuid(), os.getegid())
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a folder: remove it")
    if (st.st_uid, st.st_gid) != (uid, gid):
        # chmod while it is still ours: a daemon with CAP_CHOWN but not CAP_FOWNER could not
        # after. What the tenant later does to its own folder's mode is its own affair.
        os.chmod(path, 0o700)
        os.chown(path, uid, gid, follow_symlinks=False)


def bind_admin(path: Path) -> socket.socket:
    """The child's admin socket, bound by us (0600, in our 0700 folder) and handed over as an fd."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()      # a dead predecessor's socket file would make the bind fail
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class Runner:
    def __init__(self, spec: ProcessSpec, ctx: Context, *, want_run: bool,
                 previous: Runner | None = None) -> None:
        self.spec = spec
        self.ctx = ctx
        self.want_run = want_run        # desired state; False after an operator stop
        self.removing = False
        self.gen = 0                    # bumped by restart requests: ends the current process
        self.attempts = 0
        self.state = STOPPED
        self.backoff = Backoff(spec.policy, ctx.rng)
        self.child: Child | None = None
        self.ready = False
        self.restarts = 0
        self.last_exit = ""
        self.message = ""
        self.started_wall: float | None = None
        self.retry_at: float | None = None
        self.reasons: dict[str, int] = {}   # restarts by RESTART_REASONS
        self.failure = "exit"               # why the last attempt failed
        self.exit_code: int | None = None
        self.start_seconds: float | None = None
        self.done = trio.Event()
        self._previous = previous       # a retiring runner of the same name: wait for it
        self._spawned_at = 0.0
        self._holding_slot = False
        self._running_since = 0.0
        self._served_for: float | None = None  # how long the last process had been READY
        self._last_ping = 0.0
        self._start_deadline = math.inf
        self._reset_pending = False
        self._poke_event = trio.Event()
        self._changed = trio.Event()
        self._pump_scopes: set[trio.CancelScope] = set()
        self._sink: LogSink | None = None
        self._nursery: trio.Nursery | None = None
        self._slot = 0                  # which admin socket / config file the current process uses
        self._candidate: Candidate | None = None
        self._handover: Candidate | None = None
        self.spawn_note = ""            # why a spawn = "fork" service was exec'd, if it was

    # ---- read side ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    def _admin_path(self, slot: int) -> Path:
        return admin_socket_path(self.ctx.run_dir, self.spec.group, self.spec.service, slot)

    @property
    def admin_path(self) -> Path:
        """The admin socket of the process serving now (two alternate across swaps)."""
        return self._admin_path(self._slot)

    def status(self) -> ServiceStatus:
        child = self.child
        alive = child is not None and not child.exited.is_set()
        return ServiceStatus(
            name=self.spec.name, group=self.spec.group, state=self.state,
            pid=child.pid if alive and child else None,
            started_at=self.started_wall if alive else None,
            uptime=trio.current_time() - self._spawned_at if alive else None,
            restarts=self.restarts, ready=self.ready and self.state != UNHEALTHY,
            last_exit=self.last_exit, message=self.message,
            labels=self.spec.labels, degraded=self.backoff.tripped,
            restart_reasons=tuple(sorted(self.reasons.items())), exit_code=self.exit_code,
            start_seconds=self.start_seconds if alive else None,
            log_bytes=self._sink.bytes_written if self._sink is not None else 0,
            spawn=child.spawn if alive and child else "", spawn_note=self.spawn_note)

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def wait_settled(self, after_attempt: int | None) -> None:
        """Until the service is running or has failed/stopped (after a new attempt, if given)."""
        while not self.done.is_set():
            if self.state in SETTLED and (after_attempt is None or self.attempts > after_attempt
                                          or not self.want_run):
                return
            await self.wait_changed()

    async def wait_stopped(self) -> None:
        while not self.done.is_set() and not (self.state == STOPPED and self.child is None):
            await self.wait_changed()

    # ---- commands (called by the Supervisor on the trio thread) ------------------------------

    def poke(self) -> None:
        event, self._poke_event = self._poke_event, trio.Event()
        event.set()

    def update(self, spec: ProcessSpec) -> None:
        """A changed spec: the running process (if any) is replaced by one with the new spec."""
        self.spec = spec
        self.backoff.policy = spec.policy
        self.gen += 1
        self.poke()

    def remove(self) -> None:
        self.removing = True
        self.poke()

    # ---- the task ----------------------------------------------------------------------------

    async def main(self) -> None:
        try:
            if self._previous is not None:
                await self._previous.done.wait()
                self._previous = None
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._loop_forever()
                finally:
                    # Also on cancellation (daemon shutdown): stop the child properly, then give
                    # the pumps a bounded moment to write its last lines.
                    with trio.CancelScope(shield=True):
                        await self._stop_candidate()
                        await self._stop_child()
                        deadline = trio.current_time() + OUTPUT_DRAIN
                        for scope in self._pump_scopes:
                            scope.deadline = deadline
        finally:
            if self._sink is not None:
                self._sink.release()
                self._sink = None
            self.ctx.runner_done(self)
            self.done.set()
            if self.state != STOPPED:
                self._set_state(STOPPED)
            else:
                self._wake_waiters()

    async def _loop_forever(self) -> None:
        while True:
            try:
                await self._loop()
                return
            except Exception:
                # A supervisor bug must not take every other service down with this one.
                log.exception("runner of %s failed; restarting it in 1 s", self.name)
                self.message = "internal supervisor error (see the daemon log)"
                with trio.CancelScope(shield=True):
                    await self._stop_child()
                self._set_state(BACKOFF)
                await trio.sleep(1)

    async def _loop(self) -> None:
        while not self.removing:
            if not self.want_run:
                self._set_state(STOPPED)
                await self._wait_poke()
                continue
            gen = self.gen
            if not await self._attempt(gen) or self.removing:
                continue
            now = trio.current_time()
            delay = self.backoff.failure(now, self._served_for)
            self.restarts += 1
            self.reasons[self.failure] = self.reasons.get(self.failure, 0) + 1
            self.retry_at = now + delay
            self._set_state(DEGRADED if self.backoff.tripped else BACKOFF)
            log.info("%s: restart %d in %.1f s%s", self.name, self.restarts, delay,
                     " (degraded: breaker tripped)" if self.backoff.tripped else "")
            # A restart/start request (gen bump), a stop or a removal cuts the wait short.
            while self.gen == gen and self.want_run and not self.removing:
                if trio.current_time() >= self.retry_at:
                    break
                event = self._poke_event
                with trio.move_on_at(self.retry_at):
                    await event.wait()
            self.retry_at = None

    async def _wait_poke(self) -> None:
        await self._poke_event.wait()

    async def _attempt(self, gen: int) -> bool:
        """Run one process to its end. True when it ended in failure (restart with backoff)."""
        spec = self.spec
        self.attempts += 1
        self.ready = False
        self._served_for = None
        self._set_state(STARTING)  # queued for a start slot counts as starting
        await self.ctx.start_slots.acquire()
        self._holding_slot = True
        try:
            return await self._run_attempt(spec, gen)
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        if self._holding_slot:
            self._holding_slot = False
            self.ctx.start_slots.release()

    async def _run_attempt(self, spec: ProcessSpec, gen: int) -> bool:
        try:
            async with self.ctx.spawn_turn:
                if self.gen != gen or not self.want_run or self.removing:
                    return False        # called off while waiting for the turn
                listen = self.ctx.listeners.acquire(spec.name, spec.listen) if spec.listen else None
                owned: list[int] = []   # our copies of what only the child keeps
                try:
                    env, fds = self._prepare(spec, listen, owned)
                    child = await self._spawn(spec, env, fds)
                finally:
                    for fd in owned:
                        os.close(fd)
        except (BindError, SpawnError) as e:
            self.failure = "spawn_failed"
            self.message = str(e)
            log.warning("%s: %s", self.name, e)
            return True
        except OSError as e:
            self.failure = "spawn_failed"
            self.message = f"cannot prepare the start: {e}"
            log.warning("%s: %s", self.name, self.message)
            return True
        now = trio.current_time()
        self.child = child
        self._spawned_at = now
        self.started_wall = time.time()
        self.start_seconds = None
        self.message = ""
        self.ctx.children.add(child.pid)
        self.ctx.notify.register(child.pid, partial(self._on_notify, child),
                                 uid=spec.user[0] if spec.user else None)
        child.go()
        assert self._nursery is not None
        sink = self._sink_for(spec.log_dir)
        handlers: tuple[tuple[int, Callable[[list[Line]], None]], ...] = (
            (child.stdout, sink.stdout_lines), (child.stderr, sink.stderr_lines))
        for fd, handle in handlers:
            self._nursery.start_soon(self._pump, child, fd, sink.acquire(), handle)
        self._nursery.start_soon(self._watch, child)
        log.info("%s: started pid %d", self.name, child.pid)
        if spec.notify:
            self._start_deadline = now + spec.policy.start_timeout
            self._set_state(STARTING)
        else:
            self._became_ready(now)
        while True:
            result = await self._supervise(child, gen, spec.notify, spec.policy)
            cand = self._handover
            if cand is None:
                return result
            child, spec = await self._take_over(child, cand)

    async def _supervise(self, child: Child, gen: int, notify: bool, policy: Policy) -> bool:
        watchdog = notify and policy.watchdog_timeout > 0
        while True:
            if self._handover is not None:
                return False
            if child.exited.is_set():
                self.failure = "signal" if (self.exit_code or 0) < 0 else "exit"
                self.message = f"exited unexpectedly ({self.last_exit})"
                log.warning("%s: pid %d %s", self.name, child.pid, self.message)
                return True
            if self.gen != gen or not self.want_run or self.removing:
                await self._terminate(child)
                return False
            now = trio.current_time()
            wake = math.inf
            if not self.ready:
                if now >= self._start_deadline:
                    self.failure = "start_timeout"
                    await self._kill(child, f"not ready within {policy.start_timeout:g} s "
                                            "(no READY=1): killed")
                    return True
                wake = self._start_deadline
            else:
                if watchdog:
                    due = self._last_ping + policy.watchdog_timeout
                    if now >= due:
                        self.failure = "watchdog"
                        await self._kill(child, f"watchdog: no WATCHDOG=1 for "
                                                f"{policy.watchdog_timeout:g} s: killed")
                        return True
                    wake = min(wake, due)
                if self._reset_pending:
                    due = self.backoff.reset_due(self._running_since)
                    if now >= due:
                        self._reset_pending = False
                        if self.backoff.reset():
                            log.info("%s: up for %g s, no longer degraded", self.name,
                                     policy.backoff_reset_after)
                            self._announce_change()
                    else:
                        wake = min(wake, due)
            event = self._poke_event
            with trio.move_on_at(wake):
                await event.wait()

    def _became_ready(self, now: float) -> None:
        self._release_slot()
        self.start_seconds = now - self._spawned_at
        self.ready = True
        self._running_since = now
        self._last_ping = now
        self._reset_pending = True
        self._set_state(RUNNING)

    def _on_notify(self, child: Child, fields: dict[str, str]) -> None:
        if child is not self.child or child.exited.is_set():
            return
        now = trio.current_time()
        if "STATUS" in fields:
            self.message = fields["STATUS"][:MAX_MESSAGE]
        if fields.get("READY") == "1" and not self.ready and self.state == STARTING:
            self._became_ready(now)
        if fields.get("WATCHDOG") == "1":
            self._last_ping = now
        health = fields.get(contract.HEALTH)
        if health == contract.HEALTH_UNHEALTHY and self.state in UP:
            failing = " ".join(fields.get(contract.HEALTH_CHECK, "").split())[:MAX_MESSAGE]
            self.message = failing or "readiness checks fail"
            if self.state == UNHEALTHY:
                self._announce_change()     # another check failing now
            else:
                log.warning("%s: unhealthy: %s", self.name, self.message)
                self._set_state(UNHEALTHY)
        elif health == contract.HEALTH_OK and self.state == UNHEALTHY:
            self.message = ""
            log.info("%s: healthy again", self.name)
            self._set_state(RUNNING)
        if fields.get("STOPPING") == "1" and self.state in (STARTING, *UP):
            self._set_state(STOPPING)
        self.poke()

    async def _terminate(self, child: Child) -> None:
        """SIGTERM to the group, the grace period, then SIGKILL to the group."""
        self._set_state(STOPPING)
        grace = self.spec.policy.stop_grace
        child.signal_group(signal.SIGTERM)
        with trio.move_on_after(grace):
            await child.exited.wait()
        if not child.exited.is_set():
            self.message = f"still running {grace:g} s after SIGTERM: killed"
            log.warning("%s: pid %d %s", self.name, child.pid, self.message)
            child.signal_group(signal.SIGKILL)
            await child.exited.wait()
        with trio.move_on_after(OUTPUT_DRAIN):
            await child.output_done.wait()
            # "stopped" means the whole group is gone: the killed grandchildren are zombies until
            # the reaper (woken by their SIGCHLD) collects them; no event says when, so poll.
            while child.group_alive():
                await trio.sleep(0.01)

    async def _kill(self, child: Child, why: str) -> None:
        self.message = why
        log.warning("%s: pid %d %s", self.name, child.pid, why)
        child.signal_group(signal.SIGKILL)
        await child.exited.wait()

    async def _stop_child(self) -> None:
        child = self.child
        if child is not None and not child.exited.is_set():
            await self._terminate(child)

    async def _watch(self, child: Child) -> None:
        # Shielded: whatever is cancelled, the exit is reaped and accounted for.
        with trio.CancelScope(shield=True):
            status = await child.wait()
        self.ctx.notify.unregister(child.pid)
        self.ctx.children.discard(child.pid)
        if self.child is child:
            self._served_for = trio.current_time() - self._running_since if self.ready else None
            self.last_exit = describe_exit(status)
            self.exit_code = os.waitstatus_to_exitcode(status) if status != -1 else None
            self.child = None
            self.ready = False
        self.poke()
        self._wake_waiters()    # a swap waits on its candidate's exit too

    async def _pump(self, child: Child, fd: int, sink: LogSink, handle: Callable[[list[Line]], None]) -> None:
        # Shielded so a shutdown still records the child's last words; the runner bounds it.
        scope = trio.CancelScope(shield=True)
        self._pump_scopes.add(scope)
        try:
            with scope:
                await pump(fd, handle)
        except OSError as e:
            log.warning("%s: reading output of pid %d failed: %s", self.name, child.pid, e)
        finally:
            self._pump_scopes.discard(scope)
            sink.release()
            child.output_closed()

    def _sink_for(self, log_dir: Path) -> LogSink:
        if self._sink is None or self._sink.log_dir != log_dir:
            if self._sink is not None:
                self._sink.release()
            self._sink = LogSink(log_dir, self.ctx.logs, self.ctx.compressor, self.ctx.log_watchers).acquire()
        return self._sink

    def _prepare(self, spec: ProcessSpec, listen: socket.socket | None, owned: list[int],
                 slot: int | None = None) -> tuple[dict[str, str], list[int]]:
        """The child's environment and descriptors (oraclewad/contract.py); `owned` collects
        the fds opened here, which the caller closes once the child has its copies."""
        slot = self._slot if slot is None else slot
        env = dict(self.ctx.base_env)
        if spec.notify:
            env[contract.ENV_NOTIFY] = self.ctx.notify.env_value
            if spec.policy.watchdog_timeout > 0:
                env[contract.ENV_WATCHDOG_USEC] = str(int(spec.policy.watchdog_timeout * 1e6))
        fds: list[int] = []
        names: list[str] = []
        if listen is not None:
            fds.append(listen.fileno())
            names.append(contract.HTTP_FD_NAME)
        if spec.admin_socket:
            admin = bind_admin(self._admin_path(slot))
            owned.append(admin.detach())
            fds.append(owned[-1])
            names.append(contract.ADMIN_FD_NAME)
        if fds:
            env[contract.ENV_LISTEN_FDS] = str(len(fds))
            env[contract.ENV_LISTEN_FDNAMES] = ":".join(names)
        if spec.config is not None:
            owned.append(sealed_memfd(spec.config))
            env[contract.ENV_CONFIG_FD] = str(contract.LISTEN_FDS_START + len(fds))
            fds.append(owned[-1])
        if spec.private_tmp is not None:
            ensure_private_tmp(spec.private_tmp, spec.user)
            env["TMPDIR"] = env["HOME"] = os.fspath(spec.private_tmp)
        env.update(spec.env)
        return env, fds

    async def _spawn(self, spec: ProcessSpec, env: dict[str, str], fds: list[int]) -> Child:
        """Fork from the release's template when the policy says so and it can; else exec.
        Why a fork-mode service runs exec'd is kept in spawn_note (shown by status)."""
        cwd = spec.cwd or spec.private_tmp
        if spec.policy.spawn == "fork":
            try:
                child = await self.ctx.templates.fork(spec.argv, env, cwd, spec.user, fds)
            except ForkUnavailable as e:
                self.spawn_note = f"spawn=exec: {e}"
            else:
                self.spawn_note = ""
                return child
        else:
            self.spawn_note = ""
        return spawn(spec.argv, env, cwd=cwd, pass_fds=fds, user=spec.user)

    def forget_files(self) -> None:
        """The service is gone: its admin socket files go too."""
        for slot in (0, 1):
            with contextlib.suppress(FileNotFoundError):
                self._admin_path(slot).unlink()

    # ---- swaps: a second process on the same socket ------------------------------------------

    @property
    def candidate(self) -> Candidate | None:
        return self._candidate

    def _check_swappable(self, gen: int | None = None) -> None:
        child = self.child
        if self.removing or not self.want_run:
            raise SwapAborted(f"{self.name} is being stopped or removed")
        if gen is not None and gen != self.gen:
            raise SwapAborted(f"{self.name} was restarted or reconfigured during the swap")
        if self.state not in UP or child is None or child.exited.is_set():
            raise SwapAborted(f"{self.name} is {self.state}, not running"
                              + (f" ({self.last_exit})" if self.last_exit else ""))

    async def stage(self, spec: ProcessSpec) -> Candidate:
        """Start `spec` as a second process beside the running one (same listening socket)."""
        self._check_swappable()
        if self._candidate is not None:
            raise SwapAborted(f"{self.name} is already being swapped")
        if spec.listen != self.spec.listen:
            raise SwapAborted(f"{self.name}: a swap keeps the listening address")
        slot = 1 - self._slot
        assert self._nursery is not None
        async with self.ctx.spawn_turn:
            self._check_swappable()
            listen = self.ctx.listeners.acquire(spec.name, spec.listen) if spec.listen else None
            owned: list[int] = []
            try:
                env, fds = self._prepare(spec, listen, owned, slot)
                if spec.admin_socket:
                    env[contract.ENV_HOLD_ACCEPT] = "1"   # accepts once promoted (Swapper.finish)
                child = await self._spawn(spec, env, fds)
            except (SpawnError, OSError) as e:
                raise SwapAborted(f"cannot start the new process: {e}") from None
            finally:
                for fd in owned:
                    os.close(fd)
        now = trio.current_time()
        cand = Candidate(spec=spec, child=child, slot=slot, gen=self.gen,
                         admin_path=self._admin_path(slot) if spec.admin_socket else None,
                         started=now, last_ping=now)
        self._candidate = cand
        self.ctx.children.add(child.pid)
        self.ctx.notify.register(child.pid, partial(self._on_candidate_notify, cand),
                                 uid=spec.user[0] if spec.user else None)
        child.go()
        sink = self._sink_for(spec.log_dir)
        for fd, handle in ((child.stdout, sink.stdout_lines), (child.stderr, sink.stderr_lines)):
            self._nursery.start_soon(self._pump, child, fd, sink.acquire(), handle)
        self._nursery.start_soon(self._watch, child)
        log.info("%s: staged pid %d beside pid %d", self.name, child.pid,
                 self.child.pid if self.child else 0)
        if not spec.notify:
            cand.ready.set()
        return cand

    def _on_candidate_notify(self, cand: Candidate, fields: dict[str, str]) -> None:
        if cand.child.exited.is_set():
            return
        now = trio.current_time()
        if "STATUS" in fields:
            cand.message = fields["STATUS"][:MAX_MESSAGE]
        if fields.get("READY") == "1":
            cand.last_ping = now
            cand.ready.set()
        if fields.get("WATCHDOG") == "1":
            cand.last_ping = now
        self._wake_waiters()

    async def promote(self, cand: Candidate) -> None:
        """The candidate becomes the service's process; the old one is stopped gracefully (drains).
        Returns once the old process is gone. SwapAborted if the service changed meanwhile."""
        if cand is not self._candidate or cand.child.exited.is_set():
            raise SwapAborted(f"{self.name}: the new process is gone ({cand.exit or 'discarded'})")
        self._check_swappable(cand.gen)
        self._handover = cand
        self.poke()
        await cand.taken.wait()
        if self.child is not cand.child and not cand.child.exited.is_set():
            raise SwapAborted(f"{self.name}: the service stopped before the new process took over")

    async def _take_over(self, old: Child, cand: Candidate) -> tuple[Child, ProcessSpec]:
        """On the runner's task: switch to the candidate, then retire the old process."""
        self._handover = None
        self._candidate = None
        child, spec = cand.child, cand.spec
        self.spec = spec
        self.backoff.policy = spec.policy
        self._slot = cand.slot
        self.child = child
        now = trio.current_time()
        self._spawned_at = cand.started
        self.started_wall = time.time() - (now - cand.started)
        self.message = cand.message
        self._running_since = now
        self._last_ping = max(cand.last_ping, now - 1.0)
        self.ctx.notify.register(child.pid, partial(self._on_notify, child),
                                 uid=spec.user[0] if spec.user else None)
        self._announce_change()     # same state, new pid and release
        log.info("%s: pid %d took over from pid %d", self.name, child.pid, old.pid)
        try:
            if not old.exited.is_set():
                await self._retire(old)
        finally:
            cand.taken.set()
        return child, spec

    async def _retire(self, child: Child) -> None:
        """SIGTERM, grace, SIGKILL for a process that no longer serves (its state is not ours)."""
        grace = self.spec.policy.stop_grace
        child.signal_group(signal.SIGTERM)
        with trio.move_on_after(grace):
            await child.exited.wait()
        if not child.exited.is_set():
            log.warning("%s: old pid %d still running %g s after SIGTERM: killed", self.name, child.pid,
                        grace)
            child.signal_group(signal.SIGKILL)
            await child.exited.wait()
        with trio.move_on_after(OUTPUT_DRAIN):
            await child.output_done.wait()

    async def discard(self, cand: Candidate) -> None:
        """Stop a candidate that will not take over; the old process was never touched. SIGTERM
        first: it may have accepted connections from the shared socket, and draining answers them."""
        if self._candidate is cand:
            self._candidate = None
        if not cand.child.exited.is_set():
            await self._retire(cand.child)

    async def _stop_candidate(self) -> None:
        cand = self._candidate
        if cand is not None:
            self._handover = None
            await self.discard(cand)
            cand.taken.set()        # a promote() waiting for it learns it did not happen

    # ---- state and events --------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            previous, self.state = self.state, state
            self._announce_change(previous)

    def _announce_change(self, previous: str | None = None) -> None:
        child = self.child
        self.ctx.emit(ServiceEvent(
            name=self.spec.name, group=self.spec.group, state=self.state,
            previous=self.state if previous is None else previous,
            pid=child.pid if child is not None and not child.exited.is_set() else None,
            at=time.time(), message=self.message, restarts=self.restarts, degraded=self.backoff.tripped))
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()
