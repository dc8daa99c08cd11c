"""/metrics scrape time and size with a large fleet, and with one child hung.

Setup: oraclewad with N tenants (default 100: 200 children, recovery + broadcast, provisioned on
the machine's PostgreSQL/Redis when reachable, else the embedded ones). Every child gets one
request on its public port first, so its registry holds what a live service has (request
counter and latency histogram series), not an empty one.

Measured, each over `--scrapes` sequential GETs of http://127.0.0.1:PORT/metrics after one warm-up:
  1. text format (what curl gets) and OpenMetrics (what Prometheus 2.x asks for): wall time per
     scrape (median, p90, max), body size, series count, and the daemon's CPU per scrape;
  2. with one child SIGSTOPped (a hung service): the same wall times, which must stay within
     `[metrics] child_timeout` (default 1 s) plus the healthy scrape's time; the hung child shows
     as oraclewa_child_scrape_success 0.
Goal (issue 14): a healthy scrape under 250 ms; a hung child bounded by the timeout.

Run: .venv/bin/python bench/metrics_scrape.py [--tenants 100] [--scrapes 20] [--child-timeout 1.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b
import httpx

OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
GOAL_S = 0.250


def scrape_series(url: str, accept: str, count: int, daemon_pid: int) -> dict[str, float]:
    times = []
    size = series = 0
    with httpx.Client(timeout=30) as client:
        client.get(url, headers={"accept": accept})          # warm-up (first-scrape caches)
        ticks0 = b.cpu_ticks(daemon_pid) or 0
        for _ in range(count):
            t0 = time.perf_counter()
            response = client.get(url, headers={"accept": accept})
            times.append(time.perf_counter() - t0)
            body = response.text
            size = len(response.content)
            series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        ticks = (b.cpu_ticks(daemon_pid) or 0) - ticks0
    times.sort()
    return {"median": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))], "max": times[-1],
            "size": size, "series": series, "cpu_per_scrape": ticks / b.CLK_TCK / count, "body": body}


def line(label: str, fig: dict[str, float]) -> str:
    return (f"  {label:<34} median {fig['median'] * 1000:7.1f} ms  p90 {fig['p90'] * 1000:7.1f} ms  "
            f"max {fig['max'] * 1000:7.1f} ms  {fig['size'] / 1024:8.1f} KiB  {fig['series']:6d} series  "
            f"daemon CPU {fig['cpu_per_scrape'] * 1000:6.1f} ms/scrape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--child-timeout", type=float, default=1.0)
    b.backend_arg(parser)
    args = parser.parse_args()
    backend = b.backend_of(args)
    with b.bench_session("scrape") as (root, cleanup):
        ids = [b.unique_id("ms") for _ in range(args.tenants)]
        if backend == "external":
            cleanup.push("drop provisioned databases/users", lambda: b.drop_external(ids))
        count = 2 * args.tenants
        base = b.free_port_block(count + 10)
        port = b.free_port()
        # start_timeout = 300: a cold start of 200 children on 2 cores must not thrash (see README).
        config = b.write_config(root, backend=backend, port_base=base, port_count=count + 10,
                                policy="start_timeout = 300.0",
                                extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
                                      f"child_timeout = {args.child_timeout}\n")
        for tid in ids:
            b.write_tenant(root, tid)
        daemon = b.Daemon(root, config, cleanup)
        b.log(f"starting oraclewad with {args.tenants} tenants ({count} children, {backend} servers)")
        t0 = time.monotonic()
        daemon.start(timeout=300)
        # A loaded machine may not bring every child up: measure with those that are, and say so.
        rows = daemon.wait_all_ready(count, 300, what="children", strict=False, stall=60)
        ready = [r for r in rows if r.get("ready") and r.get("state") == "running"]
        b.log(f"{len(ready)} of {count} children ready after {time.monotonic() - t0:.0f}s; "
              "one request to each")
        rows = ready
        with httpx.Client(timeout=10) as client:
            for r in rows:
                if r.get("port"):
                    try:
                        client.get(f"http://127.0.0.1:{r['port']}/")
                    except httpx.HTTPError as e:
                        b.log(f"{r['tenant']}/{r['service']}: {e}")
        time.sleep(2)
        url = f"http://127.0.0.1:{port}/metrics"
        b.log(f"scraping {url} {args.scrapes} times per setting")
        text_fig = scrape_series(url, "text/plain", args.scrapes, daemon.pid)
        om_fig = scrape_series(url, OPENMETRICS, args.scrapes, daemon.pid)
        tenant_url = f"http://127.0.0.1:{port}/tenants/{ids[0]}/metrics"
        tenant_fig = scrape_series(tenant_url, OPENMETRICS, args.scrapes, daemon.pid)

        victim = next(r for r in rows if r["service"] == "broadcast")
        b.log(f"SIGSTOP {victim['tenant']}/{victim['service']} (pid {victim['pid']})")
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            hung_fig = scrape_series(url, OPENMETRICS, args.scrapes, daemon.pid)
        finally:
            os.kill(victim["pid"], signal.SIGCONT)
        marker = f'oraclewa_child_scrape_success{{service="broadcast",tenant="{victim["tenant"]}"}} 0'
        reported = marker in hung_fig["body"]
        b.log("stopping oraclewad")
        daemon.stop()

    print(f"\n/metrics with {args.tenants} tenants ({count} children, {len(rows)} running), "
          f"{backend} PostgreSQL/Redis, "
          f"{os.cpu_count()} cores, {args.scrapes} scrapes each, child_timeout {args.child_timeout:g}s")
    print(line("text format", text_fig))
    print(line("OpenMetrics (Prometheus' choice)", om_fig))
    print(line("one tenant (/tenants/ID/metrics)", tenant_fig))
    print(line("OpenMetrics, one child SIGSTOPped", hung_fig))
    worst = max(text_fig["p90"], om_fig["p90"])
    print(f"\ngoal: healthy scrape under {GOAL_S * 1000:.0f} ms -> p90 {worst * 1000:.0f} ms: "
          f"{'met' if worst < GOAL_S else 'NOT met'}")
    over = hung_fig["max"] - args.child_timeout
    print(f"goal: hung child bounded by the timeout -> slowest scrape with one child hung "
          f"{hung_fig['max'] * 1000:.0f} ms = child_timeout {args.child_timeout * 1000:.0f} ms + "
          f"{over * 1000:.0f} ms (healthy median {om_fig['median'] * 1000:.0f} ms): "
          f"{'met' if over < GOAL_S else 'NOT met'} (within the timeout plus the healthy goal); "
          f"reported as oraclewa_child_scrape_success 0: {'yes' if reported else 'NO'}")

if __name__ == "__main__":
    main()
