"""Anti-ban engine: pacing decisions per second with 50 instances, and the ETA forecast for 100,000
pending recipients.

A scratch database on the machine's PostgreSQL when reachable (else an embedded one), migrated with
broadcast's migrations; 50 open instances past warm-up (mature caps 70-100, gaps 30-120 s, batch
pauses, business hours, same-text limit: the whole strategy). The clock is virtual (passed in),
so the figures are the engine's own cost: one decision is one `reserve` (a transaction that locks
the 50 instance rows, assesses each, and writes the slot) and a lease's `release`.

1. Decisions/s: --decisions reserve calls, each released at landing, the virtual clock jumping to
   the engine's next slot whenever it answers Wait. Reported: decisions/s, leases/s, p50/p99 ms.
2. Forecast: when the last of --pending (100,000) messages would land: the time to compute it (a
   replay of the 50 timelines), and the ETA it gives.

Run: .venv/bin/python bench/antiban_pacing.py [--decisions 3000] [--pending 100000]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = 50


def scratch_db(stack: list) -> tuple[str, str]:
    if b.external_servers_reachable():
        admin, where = "host=127.0.0.1 port=5432 user=postgres dbname=postgres", "the machine's PostgreSQL"
    else:
        from oraclewad.provision.embedded import EmbeddedPostgres

        base = Path(tempfile.mkdtemp(prefix="owa-bench-ab-"))
        server = EmbeddedPostgres(base / "pg")
        server.start()
        stack.append(lambda: (server.stop(), shutil.rmtree(base, ignore_errors=True)))
        admin, where = server.admin_dsn, "an embedded PostgreSQL"
    dsn, drop = b.scratch_database(admin, "owa_bench_ab_", ROOT / "oraclewad/services/broadcast/migrations")
    stack.append(drop)
    return dsn, where


def main() -> int:
    b.ensure_venv()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=3000)
    p.add_argument("--pending", type=int, default=100_000)
    a = p.parse_args()

    import psycopg

    from oraclewad.services.antiban import Engine, Lease, Rules, Wait
    from oraclewad.services.instances import InstanceStates

    stack: list = []
    try:
        dsn, where = scratch_db(stack)
        names = [f"bench-{i:02d}" for i in range(INSTANCES)]
        view = InstanceStates(names, None)
        for n in names:
            view.apply_connection_update({"instance": n, "state": "open"})
        rules = Rules.for_service("broadcast", {"standby_hours": 0, "manual_messages": 0})
        quiet = logging.getLogger("bench.antiban")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        engine = Engine(service="broadcast", names=names, rules=rules, instances=view, log=quiet)
        start = 1_780_000_000.0   # a Thursday 17:26 in São Paulo
        with psycopg.connect(dsn, autocommit=True) as conn:
            engine.ensure(conn)
            # Past warm-up: day 1 was 10 days ago (mature caps today).
            conn.execute("UPDATE antiban_instances SET first_open_at = to_timestamp(%s), warm_day = %s, "
                         "last_send_at = to_timestamp(%s)",
                         (start - 11 * 86400, engine.cal.day(start - 10 * 86400), start - 3600))
            b.header("Anti-ban pacing", [f"{INSTANCES} instances, {where}, the whole conti_chips strategy",
                                         f"{a.pending:,} pending recipients (forecast)"])
            now = start
            in_flight: list[Lease] = []
            leases = waits = 0
            latencies: list[float] = []
            t0 = time.perf_counter()
            for i in range(a.decisions):
                # Release what has landed (as senders would), then decide.
                for lease in [x for x in in_flight if x.lands_at <= now + 0.001]:  # stored to the µs
                    engine.release(conn, lease, None, lease.lands_at)
                    in_flight.remove(lease)
                began = time.perf_counter()
                got = engine.reserve(conn, now, text=f"Oferta {i}", phone=f"55119{i:08d}")
                latencies.append((time.perf_counter() - began) * 1000)
                if isinstance(got, Lease):
                    leases += 1
                    in_flight.append(got)
                else:
                    assert isinstance(got, Wait)
                    waits += 1
                    soonest = min([x.lands_at for x in in_flight] + ([got.until] if got.until else []))
                    now = max(now, soonest)
            elapsed = time.perf_counter() - t0
            statuses = engine.observe(conn, now)
            began = time.perf_counter()
            forecast = engine.forecast(conn, now, a.pending)
            forecast_s = time.perf_counter() - began
            from oraclewad.services.antiban import forecast as fc

            began = time.perf_counter()
            fc.run(rules, engine.cal, statuses, now, a.pending)
            replay_s = time.perf_counter() - began
        s = b.summary(latencies)
        print(b.table(("measure", "value"), [
            ("decisions (reserve calls)", a.decisions),
            ("  of which leases / waits", f"{leases} / {waits}"),
            ("decisions/s", round(a.decisions / elapsed)),
            ("decision p50 ms", s["median"]), ("decision p99 ms", s["p99"]),
            ("virtual time covered (h)", round((now - start) / 3600, 2)),
            (f"forecast for {a.pending:,} (s, with observe)", round(forecast_s, 3)),
            ("  of which the replay (s)", round(replay_s, 3)),
            ("forecast ETA (days from now)", round((forecast.finish_at - now) / 86400, 2)
             if forecast.finish_at else forecast.reason),
        ], digits=2))
        return 0
    finally:
        for undo in reversed(stack):
            undo()


if __name__ == "__main__":
    sys.exit(main())
