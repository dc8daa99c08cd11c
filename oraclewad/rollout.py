"""Health-gated swaps: a tenant's services move to another release with nothing dropped.

For every service at once: the new process starts beside the old one on the same listening
socket, must send READY=1 within `healthy_deadline` and then pass its health checks (and keep
its watchdog) for `min_healthy_time`. Only when every service passed do the old processes get
SIGTERM (they drain); if any fails, every new process is killed and the old ones never noticed
(auto-revert). Times are trio.current_time(), so a MockClock drives the waits in tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from oraclewad.operations import ProgressView
from oraclewad.supervisor import Candidate, ProcessSpec, Supervisor, SwapAborted

REPORT_EVERY = 1.0      # seconds between progress lines while waiting


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


@dataclass
class Outcome:
    plan: Plan
    ok: bool = False
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0


class Swapper:
    def __init__(self, supervisor: Supervisor, probe: Probe, tenant: str, report: Report) -> None:
        self.sup = supervisor
        self.probe = probe
        self.tenant = tenant
        self.report = report

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
                if cand.child.exited.is_set():
                    continue        # report the exit, not the failed probe it caused
            self._say(plan, "healthy" if health == "ok" else "unhealthy", trio.current_time() - start, health,
                      detail)
            if health != "ok":
                return f"health check {health}" + (f": {detail}" if detail else "")
            if trio.current_time() >= healthy_until:
                return None
            with trio.move_on_at(min(healthy_until, trio.current_time() + gate.health_interval)):
                await _first(cand.child.exited.wait, failed.wait)

    async def finish(self, outcomes: Sequence[Outcome], cands: Sequence[Candidate],
                     promote: bool) -> None:
        """Promote every candidate (when all passed) or discard them all."""
        by_name = {c.spec.name: c for c in cands}
        if promote:
            for outcome in outcomes:
                cand = by_name[outcome.plan.name]
                try:
                    await self.sup.promote(outcome.plan.name, cand)
                except SwapAborted as e:
                    outcome.ok, outcome.reason = False, str(e)
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


