"""The ETA a campaign shows when it starts, against when it actually finished, on trio's MockClock.

The broadcast app runs in this process (its real sender and anti-ban engine, a scratch database
on the machine's PostgreSQL or an embedded one, the Evolution sandbox over HTTP); virtual time
jumps from one sender wake-up to the next (tests/broadcast/simulation.py), so days of schedule
(24 h standby, warm-up caps by day, batch pauses of 60-180 s, business hours 08:00-22:00) run
in seconds. The typing gaps are kept at 10-30 ms because the sandbox plays them in real time.
Prints per scenario: simulated duration, ETA error in % of the duration, wall time. Goal: within 10 %.

Run: .venv/bin/python bench/broadcast_eta.py [--backend embedded|external]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b
import trio
import trio.testing

from bench.broadcast_import import admin_dsn, scratch_db
from tests.broadcast.simulation import run_campaign, start_simulation
from tests.support.sandbox import Sandbox, SandboxProcess

SCENARIOS = ((3, 150), (5, 600), (10, 1500))
GOAL = 0.10


async def scenario(dsn: str, sandbox: Sandbox, instances: int, recipients: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        sim = await start_simulation(nursery, dsn, sandbox, [f"sim-{i}" for i in range(instances)])
        result = await run_campaign(sim, recipients)
        await sim.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("external", "embedded"))
    a = parser.parse_args()
    backend = a.backend or ("external" if b.external_servers_reachable() else "embedded")
    with b.bench_session("bceta") as (root, cleanup):
        admin = admin_dsn(backend, cleanup, root)
        process = SandboxProcess.start()
        cleanup.push("stop the sandbox", process.stop)
        rows = []
        for instances, recipients in SCENARIOS:
            process.reset()
            dsn = scratch_db(admin, cleanup)
            b.log(f"{instances} instances, {recipients} recipients")
            t = time.perf_counter()
            r = trio.run(scenario, dsn, Sandbox(process), instances, recipients,
                         clock=trio.testing.MockClock())
            wall = time.perf_counter() - t
            took = r["actual"] - r["start"]
            rows.append((f"{instances} instances, {recipients} recipients", int(r["sent"]), took / 86400,
                         (r["eta"] - r["start"]) / 86400, r["error"] * 100, wall))
        b.header(f"broadcast ETA at start vs actual finish (MockClock, {backend} PostgreSQL)",
                 ["default strategy (standby 24 h, warm-up day1 10-20 ... mature 70-100 a day, batches of "
                  "10 with 60-180 s pauses, 08:00-22:00 São Paulo); gaps 10-30 ms"])
        print(b.table(("scenario", "sent", "took days", "ETA days", "error %", "wall s"), rows, digits=3))
        worst = max(r[4] for r in rows)
        print(f"goal: ETA within {GOAL * 100:.0f} % of the actual finish: worst {worst:.3f} % -> "
              + ("met" if worst <= GOAL * 100 else "NOT met"))


if __name__ == "__main__":
    main()
