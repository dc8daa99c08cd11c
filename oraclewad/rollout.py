"""Health-gated swaps: a tenant's services move to another release with nothing dropped.

For every service at once: the new process starts beside the old one on the same listening
socket, must send READY=1 within `healthy_deadline` and then pass its health checks (and keep
its watchdog) for `min_healthy_time`. Only when every service passed do the old processes get
SIGTERM (they drain); if any fails, every new process is killed and the old ones never noticed
(auto-revert). Times are trio.current_time(), so a MockClock drives the waits in tests.

A service with no working process (crash-looping: in backoff or degraded) has nothing to stage
beside and nothing to fall back on, and deploying a fix to it is the main reason to deploy at all:
its runner is given the new release at once (`Supervisor.replace`, no backoff wait) and the new
process is gated the same way; on failure the runner gets its old release back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from oraclewad.operations import ProgressView
from oraclewad.supervisor import Candidate, ProcessSpec, Supervisor, SwapAborted
from oraclewad.supervisor.status import BACKOFF, DEGRADED, STOPPED, UP

REPORT_EVERY = 1.0      # seconds between progress lines while waiting
# A process that dies drops the probe's connection a moment before its exit is seen (pidfd):
# wait this long for the exit before calling a failed probe a health failure.
EXIT_GRACE = 0.5


@dataclass(frozen=True)
class Gate:
    healthy_deadline: float = 60.0
    min_healthy_time: float = 10.0
    health_interval: float = 1.0


Progress = ProgressView
Report = Callable[[Progress], None]
# (admin socket path) -> (status, detail); status "ok" passes.
Probe = Callable[[str], Awaitable[tuple[str, str]]]


@dataclass(frozen=True)
class Plan:
    name: str               # supervisor name, "imperio/recovery"
    service: str
    spec: ProcessSpec       # the new release's spec
    from_version: str
    to_version: str
    in_place: bool = False  # no working process: start the new release in its place


@dataclass
class Outcome:
    plan: Plan
    ok: bool = False
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0
    previous: ProcessSpec | None = None     # in place: the spec to go back to on failure


# (admin socket path) -> None once the new process accepts on the shared socket, else why not.
Accept = Callable[[str], Awaitable[str | None]]


class Swapper:
    def __init__(self, supervisor: Supervisor, probe: Probe, tenant: str, report: Report,
                 accept: Accept | None = None) -> None:
        self.sup = supervisor
        self.probe = probe
        self.tenant = tenant
        self.report = report
        self.accept = accept

    def _say(self, plan: Plan, phase: str, elapsed: float, health: str = "", message: str = "") -> None:
        self.report(Progress(self.tenant, plan.service, phase, round(elapsed, 3), health, message,
                             plan.from_version, plan.to_version))

    async def stage_and_gate(self, plans: Sequence[Plan],
                             gate: Gate) -> tuple[list[Outcome], list[Candidate]]:
        """Start and gate every plan at once; the first failure cancels the others' waits."""
        outcomes = [Outcome(p, started=trio.current_time()) for p in plans]
        cands: list[Candidate | None] = [None] * len(plans)
        failed = trio.Event()

        async def one(i: int) -> None:
            outcome = outcomes[i]
            if outcome.plan.in_place:
                outcome.previous = self.sup.spec(outcome.plan.name)
                reason = await self._gate_in_place(outcome.plan, gate, failed)
                outcome.ok, outcome.reason = reason is None, reason or ""
                if reason is not None:
                    failed.set()
                return
            try:
                cand = await self.sup.stage(outcome.plan.name, outcome.plan.spec)
            except SwapAborted as e:
                outcome.reason = str(e)
                failed.set()
                return
            cands[i] = cand
            reason = await self._gate(outcome.plan, cand, gate, failed)
            outcome.ok = reason is None
            outcome.reason = reason or ""
            if reason is not None:
                failed.set()

        async with trio.open_nursery() as nursery:
            for i in range(len(plans)):
                nursery.start_soon(one, i)
        return outcomes, [c for c in cands if c is not None]

    async def _gate(self, plan: Plan, cand: Candidate, gate: Gate, failed: trio.Event) -> str | None:
        """None once the candidate passed; else why it did not."""
        start = cand.started
        ready_by = start + gate.healthy_deadline
        self._say(plan, "starting", 0.0, message=f"pid {cand.child.pid}")
        next_report = start + REPORT_EVERY
        while not cand.ready.is_set():
            now = trio.current_time()
            if failed.is_set():
                return "stopped: another service of the tenant failed its swap"
            if cand.child.exited.is_set():
                return f"the new process exited before it was ready ({cand.exit})" + _said(cand)
            if now >= ready_by:
                return (f"not ready within healthy_deadline {gate.healthy_deadline:g} s (no READY=1)"
                        + _said(cand))
            if now >= next_report:
                self._say(plan, "starting", now - start)
                next_report = now + REPORT_EVERY
            with trio.move_on_at(min(ready_by, next_report)):
                await _first(cand.child.exited.wait, cand.ready.wait, failed.wait)
        ready_at = trio.current_time()
        self._say(plan, "ready", ready_at - start, message=f"READY after {ready_at - start:.2f} s")
        healthy_until = ready_at + gate.min_healthy_time
        watchdog = plan.spec.policy.watchdog_timeout if plan.spec.notify else 0.0
        while True:
            now = trio.current_time()
            if failed.is_set():
                return "stopped: another service of the tenant failed its swap"
            if cand.child.exited.is_set():
                return (f"the new process exited {now - ready_at:.1f} s after READY, within "
                        f"min_healthy_time {gate.min_healthy_time:g} s ({cand.exit})" + _said(cand))
            if watchdog > 0 and now - cand.last_ping > watchdog:
                return f"the new process stopped sending WATCHDOG=1 for {watchdog:g} s"
            health, detail = ("ok", "")
            if cand.admin_path is not None:
                health, detail = await self.probe(str(cand.admin_path))
                if health != "ok":
                    with trio.move_on_after(EXIT_GRACE):
                        await cand.child.exited.wait()
                if cand.child.exited.is_set():
                    continue        # report the exit, not the failed probe it caused
            verdict = self._verdict(plan, start, health, detail, healthy_until)
            if verdict != "":
                return verdict
            with trio.move_on_at(min(healthy_until, trio.current_time() + gate.health_interval)):
                await _first(cand.child.exited.wait, failed.wait)

    async def _gate_in_place(self, plan: Plan, gate: Gate, failed: trio.Event) -> str | None:
        """The new release runs as the service's own process: READY within healthy_deadline,
        then up and passing health for min_healthy_time (the runner keeps its watchdog)."""
        start = trio.current_time()
        before = self.sup.replace(plan.name, plan.spec)
        ready_by = start + gate.healthy_deadline
        changed = partial(self.sup.wait_changed, plan.name)
        self._say(plan, "starting", 0.0, message="no working process to stage beside: the new release "
                                                  "starts in its place")
        next_report = start + REPORT_EVERY
        while True:
            now = trio.current_time()
            status = self.sup.status(plan.name)
            started = self.sup.attempts(plan.name) > before
            if failed.is_set():
                return "stopped: another service of the tenant failed its swap"
            if started and status.state in UP:
                break
            if started and status.state in (BACKOFF, DEGRADED, STOPPED):
                return (f"the new process failed before it was ready ({status.last_exit or status.state})"
                        + (f"; {status.message}" if status.message else ""))
            if now >= ready_by:
                return f"not ready within healthy_deadline {gate.healthy_deadline:g} s (no READY=1)"
            if now >= next_report:
                self._say(plan, "starting", now - start)
                next_report = now + REPORT_EVERY
            with trio.move_on_at(min(ready_by, next_report)):
                await _first(changed, failed.wait)
        ready_at, pid = trio.current_time(), status.pid
        self._say(plan, "ready", ready_at - start, message=f"pid {pid}, READY after {ready_at - start:.2f} s")
        healthy_until = ready_at + gate.min_healthy_time
        while True:
            if failed.is_set():
                return "stopped: another service of the tenant failed its swap"
            status = self.sup.status(plan.name)
            if status.pid != pid or status.state not in UP:
                return (f"the new process stopped {trio.current_time() - ready_at:.1f} s after READY, within "
                        f"min_healthy_time {gate.min_healthy_time:g} s ({status.last_exit or status.state})")
            probed = await self._probe_process(plan.name, pid, changed)
            if probed is None:
                continue            # report the exit, not the failed probe it caused
            health, detail = probed
            verdict = self._verdict(plan, start, health, detail, healthy_until)
            if verdict != "":
                return verdict
            with trio.move_on_at(min(healthy_until, trio.current_time() + gate.health_interval)):
                await _first(changed, failed.wait)

    def _verdict(self, plan: Plan, start: float, health: str, detail: str,
                 healthy_until: float) -> str | None:
        """Reports a probe; the failure, None once healthy for min_healthy_time, "" to keep watching."""
        self._say(plan, "healthy" if health == "ok" else "unhealthy", trio.current_time() - start, health,
                  detail)
        if health != "ok":
            return f"health check {health}" + (f": {detail}" if detail else "")
        return None if trio.current_time() >= healthy_until else ""

    async def _probe_process(self, name: str, pid: int | None,
                             changed: Callable[[], Awaitable[None]]) -> tuple[str, str] | None:
        """The service's health, or None once `pid` is no longer its process."""
        admin = self.sup.admin_path(name)
        if admin is None:
            return "ok", ""
        health, detail = await self.probe(str(admin))
        if health != "ok":
            with trio.move_on_after(EXIT_GRACE):
                while self.sup.status(name).pid == pid:
                    await changed()
        return None if self.sup.status(name).pid != pid else (health, detail)

    async def _promote(self, outcome: Outcome, cand: Candidate) -> None:
        # It held its accept while gated (contract.ENV_HOLD_ACCEPT): a crash then dropped no client.
        # It accepts before the old one stops, so the socket is never unserved.
        why = await self.accept(str(cand.admin_path)) if self.accept and cand.admin_path else None
        if why is not None:
            outcome.ok, outcome.reason = False, f"the new process would not accept: {why}"
            await self.sup.discard(outcome.plan.name, cand)
            return
        try:
            await self.sup.promote(outcome.plan.name, cand)
        except SwapAborted as e:
            outcome.ok, outcome.reason = False, str(e)

    async def finish(self, outcomes: Sequence[Outcome], cands: Sequence[Candidate],
                     promote: bool) -> None:
        """Promote every candidate (when all passed) or discard them all; a service swapped in
        place keeps its new process, or gets its old release back."""
        by_name = {c.spec.name: c for c in cands}
        for outcome in outcomes:
            if outcome.plan.in_place and not promote and outcome.previous is not None:
                self.sup.replace(outcome.plan.name, outcome.previous)
        if promote:
            # All at once: each waits for its old process to drain, and they drain side by side.
            async with trio.open_nursery() as nursery:
                for outcome in outcomes:
                    if not outcome.plan.in_place:
                        nursery.start_soon(self._promote, outcome, by_name[outcome.plan.name])
        else:
            async with trio.open_nursery() as nursery:
                for name, cand in by_name.items():
                    nursery.start_soon(self.sup.discard, name, cand)
        now = trio.current_time()
        for outcome in outcomes:
            outcome.finished = now


def _said(cand: Candidate) -> str:
    return f"; it said: {cand.message}" if cand.message else ""


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Until the first of `waits` returns."""
    async with trio.open_nursery() as nursery:
        async def run(fn: Callable[[], Awaitable[object]]) -> None:
            await fn()
            nursery.cancel_scope.cancel()
        for fn in waits:
            nursery.start_soon(run, fn)


def batches(items: Sequence[str], canary: int, size: int) -> list[list[str]]:
    """Fleet rollout order: the first `canary` items, then the rest `size` at a time."""
    size = max(1, size)
    head, rest = list(items[:canary]), list(items[canary:])
    out = [head] if head else []
    out += [rest[i:i + size] for i in range(0, len(rest), size)]
    return out


