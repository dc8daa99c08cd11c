"""Control-plane latency: unary gRPC calls on the unix socket and on TCP, and `oraclectl --json status`.

A real oraclewad with 100 tenants (200 children; the machine's PostgreSQL/Redis when reachable,
else embedded) and `[control] tcp = "127.0.0.1:PORT"`. One persistent channel per transport,
built with the generated stubs in oraclewad/_proto; TCP calls carry the bearer token from
state_dir/secrets/control.token. For each transport, after 100 warm-up calls, 2,000 sequential
calls each of:
  - grpc.health.v1.Health/Check (served by grpc itself: no hop into the daemon's trio loop; the floor),
  - Control/Status for one tenant (2 rows),
  - Control/Status for every tenant (200 rows).
Then the wall time of the CLI, process start included: `oraclectl --json status` (200 rows), median
of 10 runs, next to the cost of starting Python and importing oraclectl alone.

Run: .venv/bin/python bench/rpc_latency.py [--tenants 100] [--calls 2000] [--runs 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b

START_TIMEOUT = 300.0
READY_WAIT = 150.0   # don't wait for stragglers longer than this (a lost READY=1 never arrives)
STALL = 30.0         # ... nor once the number of ready services stopped growing for this long


def time_calls(fn, calls: int, warmup: int = 100) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def wall(argv: list[str], runs: int, check_rc: bool = True) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True)
        out.append((time.perf_counter() - t0) * 1000)
        if check_rc and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} -> exit {r.returncode}: {r.stderr.decode()[-500:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=10, help="oraclectl runs (default 10)")
    b.backend_arg(parser)
    args = parser.parse_args()
    backend = b.backend_of(args)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
    from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc

    results: list[tuple[str, str, dict[str, float]]] = []
    cli: list[tuple[str, dict[str, float]]] = []
    notes: list[str] = []
    with b.bench_session("rpc") as (root, cleanup):
        ids = [b.unique_id("rp") for _ in range(args.tenants)]
        if backend == "external":
            cleanup.push("drop provisioned databases/users", lambda: b.drop_external(ids))
        tcp_port = b.free_port()
        count = 2 * args.tenants + 10
        base = b.free_port_block(count)
        config = b.write_config(root, backend=backend, port_base=base, port_count=count,
                                extra=f'[control]\ntcp = "127.0.0.1:{tcp_port}"\n',
                                # 200 children starting at once on a small machine take longer than
                                # the default 30 s to all send READY=1 (see idle_footprint.py's
                                # notes); this bench is about the control plane, so don't thrash.
                                policy=f"start_timeout = {START_TIMEOUT}")
        for tid in ids:
            b.write_tenant(root, tid)
        daemon = b.Daemon(root, config, cleanup)
        b.log(f"starting oraclewad with {args.tenants} tenants ({backend} PostgreSQL/Redis), "
              f"control on unix and tcp 127.0.0.1:{tcp_port}")
        t0 = time.monotonic()
        daemon.start(timeout=300)
        daemon_ready = time.monotonic() - t0
        b.log(f"oraclewad READY=1 after {daemon_ready:.1f}s (tenants provisioned); waiting for the children")
        rows = daemon.wait_all_ready(2 * args.tenants, READY_WAIT, strict=False, stall=STALL)
        all_ready = time.monotonic() - t0
        ready = sum(1 for r in rows if r.get("ready"))
        b.log(f"{ready}/{len(rows)} services ready after {all_ready:.1f}s; settling 5s")
        startup = (f"oraclewad READY=1 after {daemon_ready:.1f}s; {ready}/{len(rows)} services ready "
                   f"{all_ready:.1f}s after launch")
        if ready < 2 * args.tenants:
            notes.append(f"measured with {2 * args.tenants - ready} services still not ready "
                         f"{all_ready:.0f}s after launch (ready count stalled for {STALL:g}s or "
                         f"{READY_WAIT:g}s wait over)")
        if (drops := daemon.notify_drops()):
            notes.append(f"sd_notify datagrams the children logged as lost (full notify queue) during the "
                         f"cold start: {daemon.drops_text(drops)}")
        restarts = sum(r["restarts"] for r in rows)
        if restarts:
            why = sorted({r["message"] for r in rows if r["restarts"] and r["message"]})
            notes.append(f"{restarts} restarts while the {len(rows)} services started "
                         f"(last exits: {', '.join(why)[:200]})")
        time.sleep(5)

        token = (root / "state" / "secrets" / "control.token").read_text().strip()
        channels = {
            "unix": (grpc.insecure_channel(f"unix:{daemon.socket_path}"), ()),
            "tcp": (grpc.insecure_channel(f"127.0.0.1:{tcp_port}"), (("authorization", f"Bearer {token}"),)),
        }
        for ch, _md in channels.values():
            cleanup.push("close a channel", ch.close)
        for transport, (channel, md) in channels.items():
            grpc.channel_ready_future(channel).result(timeout=10)
            control = pb_grpc.ControlStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            one = pb.StatusRequest(tenant=ids[0])
            every = pb.StatusRequest()
            n_all = len(control.Status(every, metadata=md, timeout=10).services)
            cases = [
                ("Health/Check (floor)", partial(health.Check, health_pb2.HealthCheckRequest(), metadata=md,
                                                 timeout=10)),
                ("Status(1 tenant, 2 rows)", partial(control.Status, one, metadata=md, timeout=10)),
                (f"Status(all, {n_all} rows)", partial(control.Status, every, metadata=md, timeout=10)),
            ]
            for label, fn in cases:
                b.log(f"{transport}: {args.calls} x {label}")
                results.append((transport, label, b.summary(time_calls(fn, args.calls))))

        ctl = [str(b.BIN / "oraclectl"), "--socket", str(daemon.socket_path), "--json", "status"]
        b.log(f"oraclectl --json status x {args.runs}")
        out = subprocess.run(ctl, capture_output=True, text=True)
        rows_cli = out.stdout.count('"tenant"')
        wall(ctl, 2)  # warm the page cache
        cli.append((f"oraclectl --json status ({rows_cli} rows)", b.summary(wall(ctl, args.runs))))
        cli.append((f"oraclectl --json status {ids[0]}", b.summary(wall([*ctl, ids[0]], args.runs))))
        cli.append(("python -c 'import oraclectl.main' (no RPC)",
                    b.summary(wall([b.PYTHON, "-c", "import oraclectl.main"], args.runs))))
        cli.append(("python -c pass", b.summary(wall([b.PYTHON, "-c", "pass"], args.runs))))
        tcp_ctl = [str(b.BIN / "oraclectl"), "--addr", f"127.0.0.1:{tcp_port}", "--token-file",
                   str(root / "state" / "secrets" / "control.token"), "--json", "status"]
        cli.append(("oraclectl --addr (tcp) --json status", b.summary(wall(tcp_ctl, args.runs))))
        daemon_threads = b.threads(daemon.pid)
        for kind, n in sorted(daemon.warnings().items(), key=lambda kv: -kv[1])[:6]:
            notes.append(f"daemon log: {n} x {kind}")

    b.header("control-plane latency",
             [f"oraclewad with {args.tenants} tenants ({2 * args.tenants} children, {backend} "
              f"PostgreSQL/Redis, start_timeout raised to {START_TIMEOUT:g}s for the cold start)",
              startup,
              f"{args.calls} sequential unary calls per row on one persistent channel, "
              "after 100 warm-up calls",
              f"daemon threads at the end: {daemon_threads}"])
    print(b.table(["transport", "call", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                  [(t, label, s["n"], s["median"], s["p90"], s["p99"], s["max"]) for t, label, s in results],
                  digits=3))
    print()
    print(b.table(["command (process start included)", "runs", "median ms", "min ms", "max ms"],
                  [(label, s["n"], s["median"], s["min"], s["max"]) for label, s in cli], digits=1))
    get = {(t, i % 3): s for i, (t, _label, s) in enumerate(results)}  # 0 health, 1 one, 2 all
    if ("unix", 1) in get and ("tcp", 1) in get:
        for i, what in ((1, "Status(1 tenant)"), (2, "Status(all)")):
            print(f"tcp/unix {what} p50 ratio: {get[('tcp', i)]['median'] / get[('unix', i)]['median']:.2f}")
    if ("unix", 0) in get and ("unix", 1) in get:
        print(f"unix Status(1 tenant) - Health/Check p50 (the trio hop + servicer): "
              f"{get[('unix', 1)]['median'] - get[('unix', 0)]['median']:.3f} ms")
    status_cli, imp = cli[0][1]["median"], cli[2][1]["median"]
    rpc_all = get[("unix", 2)]["median"] if ("unix", 2) in get else float("nan")
    print(f"oraclectl --json status median {status_cli:.0f} ms vs python + `import oraclectl.main` alone "
          f"{imp:.0f} ms vs the Status(all) RPC itself {rpc_all:.1f} ms: process start and imports dominate")
    print(f"oraclectl tcp/unix wall ratio: {cli[4][1]['median'] / status_cli:.2f}")
    for note in notes:
        print(f"NOTE: {note}")


if __name__ == "__main__":
    main()
