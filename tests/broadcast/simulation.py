"""A campaign simulated on trio's MockClock: the broadcast app in this process (its real sender, the
real anti-ban engine, the real database, the real sandbox over HTTP), with virtual time moved on
only when the sender sleeps with nothing in flight, straight to when it wants to wake. Days of
schedule run in seconds, and every wait the engine asks for is played as asked. (The sandbox's
"composing" delay is real time, so the simulated gaps are kept short; caps, batch pauses, standby
and business hours are the real rules.) Shared by tests/broadcast/test_eta.py and bench/."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import trio
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from oraclewad.services.broadcast.app import build_app
from oraclewad.services.evolution import EvolutionClient
from oraclewad.services.instances import InstanceStates
from oraclewad.services.runtime import ServiceContext

SP = ZoneInfo("America/Sao_Paulo")
START = datetime(2026, 12, 1, 9, 0, tzinfo=SP).timestamp()     # a Tuesday, 09:00 in São Paulo
SIM_ANTIBAN: dict[str, Any] = {
    "delay_min": 0.01, "delay_max": 0.03,          # real seconds in the sandbox: kept short
    "batch_size": 10, "pause_min": 60, "pause_max": 180,
    "standby_hours": 24, "manual_messages": 0, "text_limit": 3,
    "working_hours": {"start": "08:00", "end": "22:00", "timezone": "America/Sao_Paulo"},
}


@dataclass
class Simulation:
    http: httpx.AsyncClient
    service: Any
    clock: Callable[[], float]
    instances: InstanceStates
    pool: ConnectionPool
    stopped: trio.Event
    stop_sender: trio.CancelScope

    async def aclose(self) -> None:
        """Stop the sender first (a send in flight finishes and is recorded, as at SIGTERM), then
        the client and the pool it records into."""
        self.stop_sender.cancel()
        with trio.fail_after(10):
            await self.stopped.wait()
        await self.http.aclose()
        self.pool.close()

    async def settle(self) -> None:
        """Until the sender sleeps with nothing in flight (real time passes in a thread meanwhile)."""
        sender = self.service.sender
        while sender.sleeping_until is None or sender.in_flight:
            await trio.to_thread.run_sync(time.sleep, 0.002)

    async def run_until(self, done: Callable[[], Any], limit: float = 60 * 86400) -> int:
        """Jump virtual time from one sender wake-up to the next until done(); returns the jumps."""
        jumps = 0
        end = self.clock() + limit
        while not await done():
            await self.settle()
            if self.clock() > end:
                raise AssertionError("the simulated campaign did not finish")
            clock = trio.lowlevel.current_clock()
            clock.jump(max(self.service.sender.sleeping_until - trio.current_time(), 0) + 1e-6)
            jumps += 1
        return jumps


async def start_simulation(nursery: trio.Nursery, dsn: str, sandbox: Any, names: list[str],
                           antiban: dict[str, Any] | None = None) -> Simulation:
    base = trio.current_time()

    def clock() -> float:
        return START + trio.current_time() - base

    pool = ConnectionPool(dsn, min_size=0, max_size=4, open=True)
    client = EvolutionClient(sandbox.url, sandbox.api_key)
    instances = InstanceStates(names, client, clock=clock)
    for name in names:
        await sandbox.create_instance(name)
        instances.apply_connection_update({"instance": name, "state": "open"})
    config = {"antiban": antiban or SIM_ANTIBAN, "instances": names, "webhook_token": "sim-token"}
    ctx = ServiceContext(tenant="imperio", service="broadcast", release="t", display_name="Império",
                         config=config, pg=pool,
                         redis=None, redis_prefix="imperio:broadcast:", metrics=CollectorRegistry(),
                         limiter=trio.CapacityLimiter(4), evolution=client, instances=instances)
    app = build_app(ctx, clock=clock)
    service = app.state.broadcast
    service.sender.idle_wait = service.sender.sweep_every = 6 * 3600.0   # wake for events, not polls
    # Only the sender: it observes the engine in its own sweep, and a task waking on a timer of
    # its own would make virtual time jump past it with work in flight.
    stopped = trio.Event()

    async def run_sender(task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await service.sender.run()
        finally:
            stopped.set()

    stop_sender = await nursery.start(run_sender)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://broadcast",
                             headers={"authorization": "Bearer sim-token"})
    return Simulation(http, service, clock, instances, pool, stopped, stop_sender)


def csv_of(n: int) -> str:
    return "telefone;nome\n" + "".join(f"55119{i:08d};Cliente {i}\n" for i in range(n))


async def campaign(sim: Simulation, n: int) -> int:
    template = "{Oi|Olá|E aí} {{first_name}}, {temos|chegou} {novidade|oferta} {{phone}}"
    created = await sim.http.post("/campaigns", json={"name": "sim", "templates": [template]})
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    answer = (await sim.http.post(f"/campaigns/{cid}/recipients", json={"csv": csv_of(n)})).json()
    assert answer["accepted"] == n, answer
    return cid


async def run_campaign(sim: Simulation, n: int) -> dict[str, float]:
    """Start a campaign of n recipients, run it to the end; the ETA shown at the start against the
    actual finish (the last message's landing, as the engine records it)."""
    cid = await campaign(sim, n)
    started = (await sim.http.post(f"/campaigns/{cid}/start", json={})).json()
    assert started["status"] == "running", started
    t0, eta = sim.clock(), started["eta"]
    assert eta is not None, started

    async def finished() -> bool:
        return (await sim.http.get(f"/campaigns/{cid}")).json()["status"] == "completed"

    jumps = await sim.run_until(finished)
    with sim.pool.connection() as conn:
        last = conn.execute("SELECT max(sent_at) FROM recipients WHERE campaign_id = %s", (cid,)).fetchone()
        sent = conn.execute("SELECT count(*) FROM recipients WHERE campaign_id = %s AND status IN "
                            "('sent', 'delivered', 'read')", (cid,)).fetchone()
    actual = last[0].timestamp()
    return {"campaign": cid, "start": t0, "eta": eta, "actual": actual, "sent": sent[0],
            "jumps": jumps, "error": abs(eta - actual) / (actual - t0)}


def shown(result: dict[str, float]) -> str:
    return json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
