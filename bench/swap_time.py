"""Release swap time and dropped requests: `oraclectl deploy` under HTTP load.

A real oraclewad runs one tenant (recovery + broadcast). A second release (this checkout, built
with `oraclectl release install --share-packages`) is installed, and the tenant is swapped back and
forth between `bundled` and it, `--swaps` times with min_healthy_time 0 and `--swaps` times with
the default (10 s). Swap time = from starting the command until the old processes are gone (the
command returns only then; the bench checks the old pids are gone right after). Meanwhile
`--clients` threads send requests to the recovery service's public port on fresh connections
(as shops send webhooks) and count every failed or refused one.

Goal (issue 13): swap time under 1 s + min_healthy_time, 0 failed requests.

Run: .venv/bin/python bench/swap_time.py [--swaps 10] [--clients 4] [--backend external|embedded]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b

REPO = Path(__file__).resolve().parent.parent


class Load:
    def __init__(self, port: int, clients: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self.stop.is_set():
                try:
                    r = client.get(self.url)
                    good = r.status_code == 200
                    detail = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    good, detail = False, repr(e)
                with self.lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failures.append(detail)

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.ok, len(self.failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--swaps", type=int, default=10, help="swaps per min_healthy_time (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="request threads (default 4)")
    parser.add_argument("--backend", choices=("auto", "external", "embedded"), default="auto")
    parser.add_argument("--verbose", action="store_true", help="print each deploy's progress lines")
    parser.add_argument("--spawn", choices=("fork", "exec"), default="fork",
                        help="[policy] spawn of the daemon (default fork)")
    args = parser.parse_args()
    backend = args.backend
    if backend == "auto":
        backend = "external" if b.external_servers_reachable() else "embedded"

    results: dict[float, list[float]] = {}
    per_phase: dict[float, tuple[int, int]] = {}
    with b.bench_session("swap") as (root, cleanup):
        tid = b.unique_id("sw")
        if backend == "external":
            cleanup.push("drop provisioned databases/users", lambda: b.drop_external([tid]))
        base = b.free_port_block(20)
        config = b.write_config(root, backend=backend, port_base=base, port_count=20,
                                policy=f'spawn = "{args.spawn}"')
        b.write_tenant(root, tid)
        daemon = b.Daemon(root, config, cleanup)
        b.log(f"starting oraclewad with one tenant ({backend} PostgreSQL/Redis)")
        daemon.start()
        daemon.wait_all_ready(2, 120)
        b.log("installing release 2.0.0 from this checkout (--share-packages)")
        started = time.monotonic()
        daemon.ctl("release", "install", str(REPO), "--version", "2.0.0", "--share-packages", timeout=600)
        install_s = time.monotonic() - started
        port = next(r["port"] for r in daemon.status(tid) if r["service"] == "recovery")
        load = Load(port, args.clients)
        for t in load.threads:
            t.start()
        time.sleep(1.0)
        for mht in (0.0, 10.0):
            times: list[float] = []
            ok0, failed0 = load.counts()
            for i in range(args.swaps):
                rows_now = daemon.status(tid)
                before = {r["service"]: r["pid"] for r in rows_now}
                target = "bundled" if rows_now[0]["release"] == "2.0.0" else "2.0.0"
                t0 = time.monotonic()
                out = daemon.ctl("deploy", tid, target, "--min-healthy-time", f"{mht:g}", timeout=300).stdout
                took = time.monotonic() - t0
                if args.verbose:
                    b.log("deploy progress:\n" + out)
                gone = [pid for pid in before.values() if b.alive(pid)]
                if gone:
                    raise RuntimeError(f"old processes {gone} still alive after the deploy returned")
                times.append(took)
                b.log(f"min_healthy_time {mht:g}: swap {i + 1}/{args.swaps} to {target}: {took:.2f} s")
                time.sleep(0.5)
            ok1, failed1 = load.counts()
            results[mht] = times
            per_phase[mht] = (ok1 - ok0, failed1 - failed0)
        load.stop.set()
        for t in load.threads:
            t.join()
        failures = list(load.failures)

    b.header(f"release swap (spawn = {args.spawn}): `oraclectl deploy` start -> old processes gone, "
             "under HTTP load",
             [f"one tenant (recovery + broadcast swapped together), {backend} PostgreSQL/Redis; "
              f"{args.clients} client threads on fresh connections to recovery's port",
              f"release install (venv + pip --share-packages + import check): {install_s:.1f} s"])
    rows = []
    for mht, times in results.items():
        s = b.summary(times)
        ok, failed = per_phase[mht]
        rows.append((f"min_healthy_time {mht:g} s", s["n"], s["min"], s["median"], s["max"], ok, failed))
    print(b.table(["", "swaps", "min s", "median s", "max s", "requests ok", "failed"], rows, digits=2))
    for mht, times in results.items():
        median = b.summary(times)["median"]
        goal = 1.0 + mht
        print(f"min_healthy_time {mht:g} s: median {median:.2f} s vs goal < {goal:g} s "
              f"(1 s + min_healthy_time): {'met' if median < goal else 'NOT met'}; "
              f"overhead beyond min_healthy_time {median - mht:.2f} s")
    print(f"failed requests during all swaps: {len(failures)} (goal 0)")
    for f in failures[:5]:
        print(f"  {f}")


if __name__ == "__main__":
    main()
