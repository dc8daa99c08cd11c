"""The swap gate's clock, on trio's MockClock: READY within healthy_deadline, then min_healthy_time
of passing health (the defaults, 60 s and 10 s, take no real time here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from oraclewad.rollout import Gate, Plan, Swapper
from oraclewad.settings import Policy
from oraclewad.supervisor import ProcessSpec


@dataclass
class FakeChild:
    pid: int = 4242
    status: int | None = None
    exited: trio.Event = field(default_factory=trio.Event)


@dataclass
class FakeCandidate:
    """What the gate reads of a staged process (a real one is tested in test_swap.py)."""

    spec: ProcessSpec
    started: float
    child: FakeChild = field(default_factory=FakeChild)
    ready: trio.Event = field(default_factory=trio.Event)
    last_ping: float = 0.0
    message: str = ""
    admin_path: str | None = "/run/admin.sock"

    @property
    def exit(self) -> str:
        return "exit status 3"


class FakeSupervisor:
    def __init__(self, cand_setup) -> None:  # type: ignore[no-untyped-def]
        self.cand_setup = cand_setup
        self.cands: list[FakeCandidate] = []

    async def stage(self, name: str, spec: ProcessSpec) -> FakeCandidate:
        cand = FakeCandidate(spec, trio.current_time(), last_ping=trio.current_time())
        self.cands.append(cand)
        trio.lowlevel.spawn_system_task(self.cand_setup, cand)
        return cand


SPEC = ProcessSpec(name="t/recovery", group="t", argv=("x",), log_dir=None,  # type: ignore[arg-type]
                   policy=Policy(watchdog_timeout=30.0))


async def run_gate(behaviour, probe=None, gate: Gate | None = None) -> tuple[str, float]:  # type: ignore[no-untyped-def]
    async def ok(path: str) -> tuple[str, str]:
        return "ok", ""

    sup = FakeSupervisor(behaviour)
    swapper = Swapper(sup, probe or ok, "t", lambda p: None)  # type: ignore[arg-type]
    start = trio.current_time()
    outcomes, _ = await swapper.stage_and_gate([Plan("t/recovery", "recovery", SPEC, "a", "b")],
                                                  gate or Gate())
    return outcomes[0].reason if not outcomes[0].ok else "", trio.current_time() - start


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def pinging(cand: FakeCandidate, after: float = 2.0, die_at: float | None = None) -> None:
    await trio.sleep(after)
    cand.ready.set()
    t = after
    while die_at is None or t < die_at:
        await trio.sleep(1.0)
        t += 1.0
        cand.last_ping = trio.current_time()
    cand.child.exited.set()


async def test_a_healthy_process_passes_after_min_healthy_time(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    probes: list[float] = []

    async def probe(path: str) -> tuple[str, str]:
        probes.append(trio.current_time())
        return "ok", ""

    reason, took = await run_gate(pinging, probe)
    assert reason == "" and took == pytest.approx(2.0 + 10.0)
    assert len(probes) == 11        # every second of the 10 s, and at the end


async def test_no_ready_within_the_deadline(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    async def silent(cand: FakeCandidate) -> None:
        while True:
            await trio.sleep(1.0)
            cand.last_ping = trio.current_time()

    reason, took = await run_gate(silent)
    assert "not ready within healthy_deadline 60 s" in reason and took == pytest.approx(60.0)


async def test_an_exit_within_min_healthy_time(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    async def crashes(cand: FakeCandidate) -> None:
        await pinging(cand, after=1.0, die_at=4.0)

    reason, took = await run_gate(crashes)
    assert "exited 3.0 s after READY, within min_healthy_time 10 s (exit status 3)" in reason
    assert took == pytest.approx(4.0)


async def test_failing_health_and_a_stalled_watchdog(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    async def failing(path: str) -> tuple[str, str]:
        return "failing", "postgres: connection refused"

    reason, _ = await run_gate(pinging, failing)
    assert reason == "health check failing: postgres: connection refused"

    async def hangs(cand: FakeCandidate) -> None:
        await trio.sleep(1.0)
        cand.ready.set()

    reason, took = await run_gate(hangs, gate=Gate(min_healthy_time=60.0))
    assert reason == "the new process stopped sending WATCHDOG=1 for 30 s"
    assert took == pytest.approx(31.0)      # last ping at 0 (its spawn), noticed at the next poll


async def test_a_probe_failing_because_the_process_died_reports_the_exit(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    # Killed mid-probe: the connection drops first, the exit (pidfd) is seen a moment later.
    cands: list[FakeCandidate] = []

    async def dies(path: str) -> tuple[str, str]:
        if trio.current_time() < 4.0:
            return "ok", ""
        cand = cands[-1]

        async def exit_soon() -> None:
            await trio.sleep(0.05)
            cand.child.exited.set()
        trio.lowlevel.spawn_system_task(exit_soon)
        return "failing", "health endpoint did not answer: RemoteProtocolError"

    async def behaviour(cand: FakeCandidate) -> None:
        cands.append(cand)
        await pinging(cand, after=1.0)

    reason, _ = await run_gate(behaviour, dies)
    assert "the new process exited" in reason and "within min_healthy_time 10 s" in reason
