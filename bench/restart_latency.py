"""Restart latency: `kill -9` of a tenant's recovery child -> that service READY again.

A real oraclewad supervises 20 tenants (recovery only). Each is killed once with SIGKILL, so every
restart is a first restart (delay = backoff_initial +- jitter, the default 0.1 s): killing one
service 20 times would instead measure the doubling backoff and the breaker (5 restarts in 10 min
-> degraded, retrying at backoff_max = 60 s). Observed through `oraclectl --json events -f` (the
daemon's state-change stream): the time the bench sees the `running` event, plus the daemon's own
timestamps of the `backoff` (exit noticed), `starting` (respawned) and `running` (READY=1) events.

Run: .venv/bin/python bench/restart_latency.py [--kills 20] [--backend external|embedded]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b


def main() -> None:  # noqa: C901 (one linear measuring script; its steps print as they go)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="tenants to kill once each (default 20)")
    parser.add_argument("--backend", choices=("auto", "external", "embedded"), default="auto")
    args = parser.parse_args()
    backend = args.backend
    if backend == "auto":
        backend = "external" if b.external_servers_reachable() else "embedded"

    with b.bench_session("restart") as (root, cleanup):
        from oraclewad.settings import Policy

        policy = Policy()
        ids = [b.unique_id("rl") for _ in range(args.kills)]
        if backend == "external":
            cleanup.push("drop provisioned databases/users", lambda: b.drop_external(ids))
        base = b.free_port_block(args.kills + 10)
        config = b.write_config(root, backend=backend, port_base=base, port_count=args.kills + 10)
        for tid in ids:
            b.write_tenant(root, tid, '["recovery"]')
        daemon = b.Daemon(root, config, cleanup)
        b.log(f"starting oraclewad with {len(ids)} tenants (recovery only, {backend} PostgreSQL/Redis)")
        started = time.monotonic()
        daemon.start()
        rows = daemon.wait_all_ready(len(ids), 240)
        b.log(f"all {len(rows)} services ready after {time.monotonic() - started:.1f}s; settling 3s")
        time.sleep(3)

        events: queue.Queue[tuple[float, dict]] = queue.Queue()
        stream = subprocess.Popen([str(b.BIN / "oraclectl"), "--socket", str(daemon.socket_path), "--json",
                                   "events", "-f", "-n", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                  start_new_session=True)

        def stop_stream() -> None:
            if stream.poll() is None:
                stream.terminate()
                try:
                    stream.wait(5)
                except subprocess.TimeoutExpired:
                    stream.kill()
                    stream.wait()

        cleanup.push("stop the events stream", stop_stream)

        def read() -> None:
            assert stream.stdout is not None
            for line in stream.stdout:
                arrived = time.monotonic()
                try:
                    events.put((arrived, json.loads(line)))
                except json.JSONDecodeError:
                    b.log(f"events: not JSON: {line.rstrip()}")

        threading.Thread(target=read, daemon=True).start()
        time.sleep(1.0)  # the stream is open before the first kill

        results = []    # (tenant, exit_noticed, respawned, ready_daemon, ready_observed)
        failures = []
        by_tenant = {r["tenant"]: r for r in daemon.status()}
        for i, tid in enumerate(ids):
            old_pid = by_tenant[tid]["pid"]
            while not events.empty():
                events.get_nowait()
            kill_wall, kill_mono = time.time(), time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            phases: dict[str, float] = {}
            observed = None
            deadline = kill_mono + 30
            while observed is None and time.monotonic() < deadline:
                try:
                    arrived, ev = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                if ev.get("tenant") != tid or ev.get("kind") != "state":
                    continue
                phases.setdefault(ev["state"], ev["ts"] - kill_wall)
                if ev["state"] == "running":
                    observed = arrived - kill_mono
            if observed is None:
                failures.append(f"{tid}: no `running` event within 30s (saw {sorted(phases)})")
                continue
            now = {r["tenant"]: r for r in daemon.status(tid)}[tid]
            if not (now["ready"] and now["pid"] != old_pid):
                failures.append(f"{tid}: `running` event but status says {now}")
            results.append((tid, phases.get("backoff"), phases.get("starting"), phases["running"], observed))
            b.log(f"kill {i + 1}/{len(ids)}: ready again after {observed * 1000:.0f} ms")
            time.sleep(1.0)

        rows_after = daemon.status()
        warnings = daemon.warnings()
        unexpected = [r for r in rows_after if r["restarts"] != 1]
        stop_stream()

    # ---- report (after cleanup, so a slow teardown doesn't hide the figures) ----
    b.header("restart latency: kill -9 of a tenant's recovery child -> READY again",
             [f"oraclewad supervising {len(ids)} tenants (recovery only), {backend} PostgreSQL/Redis",
              f"policy: backoff_initial {policy.backoff_initial:g}s (+-{policy.backoff_jitter * 100:.0f}% "
              f"jitter), start_timeout {policy.start_timeout:g}s; one kill per tenant (each a 1st restart)",
              "observed via the `oraclectl --json events -f` stream (not status polling); "
              "'daemon' columns are the daemon's event timestamps"])
    if not results:
        print("no successful restart measured")
    else:
        cols = [("exit noticed (backoff ev)", 1), ("respawned (starting ev)", 2),
                ("READY (running ev, daemon ts)", 3), ("READY observed by client", 4)]
        out = []
        for label, idx in cols:
            values = [r[idx] * 1000 for r in results if r[idx] is not None]
            if values:
                s = b.summary(values)
                out.append((label, s["n"], s["min"], s["median"], s["p90"], s["max"]))
        print(b.table(["kill -> (ms)", "n", "min", "median", "p90", "max"], out))
        child_start = [(r[3] - r[2]) * 1000 for r in results if r[2] is not None]
        ready = [r[4] for r in results]
        print(f"median kill->READY: {b.summary(ready)['median'] * 1000:.0f} ms = backoff "
              f"{policy.backoff_initial * 1000:.0f} ms configured + child start (spawn->READY=1) median "
              f"{b.summary(child_start)['median']:.0f} ms")
        ratio = b.summary(ready)["median"] / policy.backoff_initial
        print(f"kill->READY / backoff_initial ratio (median): {ratio:.1f}")
    for kind, n in sorted(warnings.items(), key=lambda kv: -kv[1])[:5]:
        print(f"NOTE daemon log: {n} x {kind}")
    for f in failures:
        print(f"FAILED: {f}")
    if unexpected:
        print(f"NOTE: {len(unexpected)} services show restarts != 1 after the run: "
              + ", ".join(f"{r['tenant']}/{r['service']}={r['restarts']}" for r in unexpected[:5]))


if __name__ == "__main__":
    main()
