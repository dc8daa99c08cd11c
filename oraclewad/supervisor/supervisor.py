"""The Supervisor: the set of supervised services, reconciled against specs, and the operator's verbs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import resource
from collections.abc import Iterable, Mapping
from pathlib import Path

import trio

from oraclewad.errors import NotFound, Unavailable
from oraclewad.fanout import Fanout
from oraclewad.files import write_atomic
from oraclewad.settings import LogSettings
from oraclewad.supervisor.forking import Templates
from oraclewad.supervisor.listeners import Listeners
from oraclewad.supervisor.logsink import Compressor, LogWatchers
from oraclewad.supervisor.notify import NotifyServer, abstract_name
from oraclewad.supervisor.process import seal_inherited_fds
from oraclewad.supervisor.reaper import Reaper
from oraclewad.supervisor.runner import Candidate, Context, Runner
from oraclewad.supervisor.spec import ProcessSpec
from oraclewad.supervisor.status import (
    BACKOFF,
    DEGRADED,
    STARTING,
    UP,
    Changes,
    ServiceEvent,
    ServiceStatus,
)

log = logging.getLogger("oraclewad.supervisor")

INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "PYTHONPATH")
SHUTDOWN_MARGIN = 5.0       # beyond the longest stop grace, before shutdown stops waiting


def minimal_env() -> dict[str, str]:
    """What a child inherits from the daemon's environment; everything else comes from its spec."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"     # stdout is a pipe: without this, Python children buffer their logs
    return env


def _raise_fd_limit() -> None:
    # Each child holds about eight of our fds (pipes, pidfd, log files): 200 children outgrow
    # the usual soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Supervisor:
    """Runs ProcessSpecs as supervised children (see ARCHITECTURE.md, "Supervision policy").

    Use: `await nursery.start(supervisor.run)`, then `apply(specs)` whenever the wanted set
    changes. Cancelling run() stops every child (SIGTERM to all groups at once, grace, SIGKILL).
    """

    def __init__(self, run_dir: Path, state_dir: Path, logs: LogSettings, *,
                 rng: random.Random | None = None, reap_grace: float = 10.0,
                 max_parallel_starts: int = 0, template_preload: Iterable[str] | None = None) -> None:
        """max_parallel_starts: services allowed between spawn and READY=1 at once (0: 4 per core).
        template_preload: what fork-mode templates import (None: the service stack)."""
        self.run_dir = Path(run_dir)
        self.state_dir = Path(state_dir)
        self.logs = logs
        self._stopped_path = self.state_dir / "stopped.json"
        self._operator_stopped = self._load_stopped()
        self._persist_lock = trio.Lock()
        self._runners: dict[str, Runner] = {}
        self._retiring: dict[str, Runner] = {}     # removed, still stopping
        self._events: Fanout[ServiceEvent] = Fanout(1024)
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._children: set[int] = set()
        self.listeners = Listeners()
        self.compressor = Compressor()
        self.log_watchers = LogWatchers()
        self.notify = NotifyServer(abstract_name(self.run_dir))
        self.reaper = Reaper(self._children.__contains__, grace=reap_grace)
        base_env = minimal_env()
        self.templates = Templates(base_env, self._children,
                                   tuple(template_preload) if template_preload is not None else None)
        self._ctx = Context(run_dir=self.run_dir, logs=logs, compressor=self.compressor,
                            log_watchers=self.log_watchers,
                            listeners=self.listeners, notify=self.notify, children=self._children,
                            base_env=base_env, rng=rng or random.Random(), emit=self._events.publish,
                            runner_done=self._runner_done, templates=self.templates,
                            start_slots=trio.Semaphore(max_parallel_starts or 4 * (os.cpu_count() or 1)))

    # ---- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; then stop every child before returning."""
        # The runners live under a shielded scope so that cancelling run() does not cut their
        # stop sequence short: run() notices the cancellation and stops them in order.
        core = trio.CancelScope(shield=True)
        async with trio.open_nursery() as outer:
            await outer.start(self._core, core)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._closing = True    # an apply() racing the shutdown starts nothing new
                with trio.CancelScope(shield=True):
                    runners = [*self._runners.values(), *self._retiring.values()]
                    limit = max((r.spec.policy.stop_grace for r in runners), default=0.0)
                    with trio.move_on_after(limit + SHUTDOWN_MARGIN):
                        await self.stop_all()
                    await self.templates.stop()
                core.cancel()

    async def _core(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            _raise_fd_limit()
            seal_inherited_fds()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.reaper.run)
                    await nursery.start(self.notify.serve)
                    await nursery.start(self.templates.run)
                    nursery.start_soon(self.compressor.run)
                    self._nursery = nursery
                    task_status.started()
            finally:
                self._nursery = None
                self.listeners.close_all()

    # ---- reconciling -------------------------------------------------------------------------

    def apply(self, specs: Mapping[str, ProcessSpec]) -> Changes:
        """Make the supervised set equal `specs`: start new names, stop removed ones, restart
        those whose spec changed. Unchanged services keep their process. Returns at once."""
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("Supervisor.apply() needs Supervisor.run() to be running")
        for name, spec in specs.items():
            if spec.name != name:
                raise ValueError(f"spec under key {name!r} is named {spec.name!r}")
        removed = sorted(set(self._runners) - set(specs))
        added, restarted, unchanged = [], [], []
        for name in removed:
            runner = self._runners.pop(name)
            self._retiring[name] = runner
            runner.remove()
        for name, spec in sorted(specs.items()):
            runner = self._runners.get(name)
            if runner is None:
                want_run = not self._closing and name not in self._operator_stopped
                runner = Runner(spec, self._ctx, want_run=want_run,
                                previous=self._retiring.get(name))
                self._runners[name] = runner
                nursery.start_soon(runner.main, name=f"supervise {name}")
                added.append(name)
            elif runner.spec != spec:
                runner.update(spec)
                restarted.append(name)
            else:
                runner.spec = spec      # labels are not compared: take the new ones as they are
                unchanged.append(name)
        return Changes(added=tuple(added), removed=tuple(removed), restarted=tuple(restarted),
                       unchanged=tuple(unchanged))

    def _runner_done(self, runner: Runner) -> None:
        name = runner.name
        if self._retiring.get(name) is runner:
            del self._retiring[name]
        successor = self._runners.get(name)
        if successor is None:
            # Removed for good: free its port and delete its config (credentials).
            self.listeners.release(name)
            runner.forget_files()

    # ---- operator verbs ----------------------------------------------------------------------

    def _runner(self, name: str, *, starting: bool = False) -> Runner:
        runner = self._runners.get(name)
        if runner is None:
            raise NotFound(f"no supervised service {name!r}")
        if starting and self._closing:
            raise Unavailable("the daemon is shutting down: nothing is started any more")
        return runner

    async def start(self, name: str) -> ServiceStatus:
        """Start (or retry now, if waiting in backoff); returns once running or failed."""
        runner = self._runner(name, starting=True)
        await self._set_operator_stopped(name, False)
        state = runner.state
        after = None if runner.want_run and state in (STARTING, *UP) else runner.attempts
        if state in (BACKOFF, DEGRADED):
            runner.gen += 1         # the operator asks for it now: skip the rest of the delay
        runner.want_run = True
        runner.poke()
        await runner.wait_settled(after)
        return runner.status()

    async def stop(self, name: str) -> ServiceStatus:
        """Stop and keep stopped, across daemon restarts too, until start(name)."""
        runner = self._runner(name)
        await self._set_operator_stopped(name, True)
        runner.want_run = False
        runner.poke()
        await runner.wait_stopped()
        return runner.status()

    async def restart(self, name: str) -> ServiceStatus:
        """A new process now (starts a stopped service); returns once running or failed."""
        runner = self._runner(name, starting=True)
        await self._set_operator_stopped(name, False)
        after = runner.attempts
        runner.want_run = True
        runner.gen += 1
        runner.poke()
        await runner.wait_settled(after)
        return runner.status()

    # ---- swaps -------------------------------------------------------------------------------

    async def stage(self, name: str, spec: ProcessSpec) -> Candidate:
        """Start `spec` beside the running process of `name` on the same listening socket.
        SwapAborted (with the reason) when the service is not running or is already swapping."""
        if spec.name != name:
            raise ValueError(f"spec {spec.name!r} staged for {name!r}")
        return await self._runner(name, starting=True).stage(spec)

    def replace(self, name: str, spec: ProcessSpec) -> int:
        """Run `spec` for `name` now, in place of its process and skipping any backoff delay: the
        swap of a service that has no working process to stage beside (crash-looping, in backoff).
        Returns the count of start attempts before, so the caller can follow the new one
        (`attempts`)."""
        if spec.name != name:
            raise ValueError(f"spec {spec.name!r} given for {name!r}")
        runner = self._runner(name, starting=True)
        before = runner.attempts
        runner.update(spec)
        return before

    def attempts(self, name: str) -> int:
        """How many times `name`'s process has been started (each restart counts)."""
        return self._runner(name).attempts

    async def promote(self, name: str, cand: Candidate) -> None:
        """The candidate takes over; returns once the old process has stopped (gracefully)."""
        await self._runner(name).promote(cand)

    async def discard(self, name: str, cand: Candidate) -> None:
        """Kill a candidate; the running process was never touched."""
        runner = self._runners.get(name) or self._retiring.get(name)
        if runner is not None:
            await runner.discard(cand)

    def admin_path(self, name: str) -> Path | None:
        """The admin socket of the process serving `name` now (it alternates across swaps)."""
        runner = self._runners.get(name) or self._retiring.get(name)
        return runner.admin_path if runner is not None and runner.spec.admin_socket else None

    def spec(self, name: str) -> ProcessSpec:
        return self._runner(name).spec

    async def wait_changed(self, name: str) -> None:
        """Until anything about `name` changes (state, a notification, a process exit)."""
        await self._runner(name).wait_changed()

    async def stop_all(self) -> None:
        """Stop every child at once (not remembered as an operator stop); used at shutdown."""
        runners = [*self._runners.values(), *self._retiring.values()]
        for runner in runners:
            runner.want_run = False
            runner.poke()
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(runner.wait_stopped)

    # ---- observing ---------------------------------------------------------------------------

    def snapshot(self) -> list[ServiceStatus]:
        runners = dict(self._retiring)
        runners.update(self._runners)
        return [runners[name].status() for name in sorted(runners)]

    def status(self, name: str) -> ServiceStatus:
        runner = self._runners.get(name) or self._retiring.get(name)
        if runner is None:
            raise NotFound(f"no supervised service {name!r}")
        return runner.status()

    async def wait_state(self, name: str, states: str | Iterable[str], timeout: float) -> ServiceStatus:
        """Until `name` is in one of `states`; trio.TooSlowError after `timeout` seconds."""
        wanted = {states} if isinstance(states, str) else set(states)
        with trio.fail_after(timeout):
            while True:
                runner = self._runners.get(name) or self._retiring.get(name)
                if runner is None:
                    raise NotFound(f"no supervised service {name!r}")
                if runner.state in wanted:
                    return runner.status()
                await runner.wait_changed()

    async def wait_removed(self, name: str, timeout: float) -> None:
        """Until a service removed by apply() has stopped and let go of its port."""
        runner = self._retiring.get(name)
        if runner is not None:
            with trio.fail_after(timeout):
                await runner.done.wait()

    def subscribe(self, buffer: int = 1024) -> trio.MemoryReceiveChannel[ServiceEvent]:
        """State-change events. A subscriber that falls `buffer` events behind is dropped (its
        channel ends) rather than slowing the supervisor."""
        return self._events.subscribe(buffer)

    def listen_address(self, name: str) -> tuple[str, int] | None:
        """The address a service's socket is bound to (the kernel's port when the spec says 0)."""
        return self.listeners.address(name)

    @property
    def operator_stopped(self) -> frozenset[str]:
        return frozenset(self._operator_stopped)

    # ---- desired state on disk ---------------------------------------------------------------

    def _load_stopped(self) -> set[str]:
        try:
            doc = json.loads(self._stopped_path.read_text())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s): no service is held stopped", self._stopped_path, e)
            return set()
        names = doc.get("stopped", []) if isinstance(doc, dict) else []
        return {n for n in names if isinstance(n, str)}

    async def forget(self, names: Iterable[str]) -> None:
        """Drop operator stops of services that no longer exist (a removed tenant re-added later
        starts like a new one)."""
        for name in names:
            await self._set_operator_stopped(name, False)

    async def _set_operator_stopped(self, name: str, stopped: bool) -> None:
        if (name in self._operator_stopped) == stopped:
            return
        if stopped:
            self._operator_stopped.add(name)
        else:
            self._operator_stopped.discard(name)
        async with self._persist_lock:
            data = json.dumps({"stopped": sorted(self._operator_stopped)}, indent=1).encode() + b"\n"
            await trio.to_thread.run_sync(write_atomic, self._stopped_path, data, 0o640)
