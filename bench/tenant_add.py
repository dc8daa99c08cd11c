"""Onboarding time: `oraclectl tenant add ID --services all` until both services are ready.

For each backend (embedded PostgreSQL/Redis started by the daemon; the machine's servers at
127.0.0.1, skipped with a message when unreachable) a real oraclewad starts with no tenants, then
10 tenants are added one after the other with the CLI, which writes tenants.d/ID.toml, provisions
the two databases, roles and Redis ACL users, applies migrations, starts both children and waits
for READY=1 from each. Wall time per add includes the oraclectl process start. At the end every
added tenant is removed with `oraclectl tenant remove ID --purge --yes` (also timed).
The goal is < 2 s per tenant; the system this replaces promised < 30 minutes.

Run: .venv/bin/python bench/tenant_add.py [--adds 10] [--backend both|embedded|external]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b

GOAL_S = 2.0
ORIGINAL_S = 30 * 60.0


def run_backend(root: Path, cleanup: b.Cleanup, backend: str, adds: int, spawn: str = "fork") -> dict:
    out: dict = {"backend": f"{backend} {spawn}", "add": [], "remove": [], "failures": [], "notes": []}
    ids = [b.unique_id("ta") for _ in range(adds)]
    if backend == "external":
        # A safety net: `--purge` should already have dropped everything.
        cleanup.push("drop provisioned databases/users", lambda: b.drop_external(ids))
    root.mkdir()
    count = 2 * adds + 10
    base = b.free_port_block(count)
    config = b.write_config(root, backend=backend, port_base=base, port_count=count,
                            policy=f'spawn = "{spawn}"')
    daemon = b.Daemon(root, config, cleanup)
    b.log(f"{backend} {spawn}: starting oraclewad with no tenants")
    t0 = time.monotonic()
    daemon.start(timeout=180)
    out["daemon_start_s"] = time.monotonic() - t0
    time.sleep(2)
    added = []

    def remove_all() -> None:
        for tid in list(added):
            r = daemon.ctl("tenant", "remove", tid, "--purge", "--yes", check=False, timeout=120)
            if r.returncode == 0:
                added.remove(tid)

    cleanup.push(f"{backend}: remove added tenants", remove_all)
    for i, tid in enumerate(ids):
        t0 = time.perf_counter()
        r = daemon.ctl("--json", "tenant", "add", tid, "--services", "all", check=False, timeout=300)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            out["failures"].append(f"oraclectl tenant add {tid} --services all -> exit {r.returncode}: "
                                   f"{(r.stderr or r.stdout).strip()[-400:]}")
            added.append(tid)  # a file may have been written: remove it too
            continue
        added.append(tid)
        states = {s["service"]: (s["state"], s["ready"]) for s in json.loads(r.stdout).get("states", [])}
        if not all(ready for _state, ready in states.values()) or len(states) != 2:
            out["failures"].append(f"{tid}: add returned but states are {states}")
        out["add"].append(elapsed)
        b.log(f"{backend}: add {i + 1}/{adds} {tid}: {elapsed:.2f}s")
    rows = daemon.status()
    if (restarts := sum(r["restarts"] for r in rows)):
        out["notes"].append(f"{restarts} restarts among the added services")
    for tid in list(added):
        t0 = time.perf_counter()
        r = daemon.ctl("tenant", "remove", tid, "--purge", "--yes", check=False, timeout=120)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            out["failures"].append(f"oraclectl tenant remove {tid} --purge --yes -> exit {r.returncode}: "
                                   f"{(r.stderr or r.stdout).strip()[-400:]}")
            continue
        added.remove(tid)
        out["remove"].append(elapsed)
    left = daemon.status()
    if left:
        out["failures"].append(f"{len(left)} services still listed after removing every tenant")
    if backend == "external":
        out["notes"].extend(_leftovers_external(ids))
    b.log(f"{backend}: stopping oraclewad")
    daemon.stop()
    return out


def _leftovers_external(ids: list[str]) -> list[str]:
    """What --purge left on the machine's servers (databases, roles, ACL users, keys)."""
    import psycopg
    import redis

    names = [f"{t.lower()}_{s}" for t in ids for s in ("recovery", "broadcast")]
    notes = []
    with psycopg.connect(b.EXTERNAL_PG) as conn:
        dbs = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                          (names,))]
        roles = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                            (names,))]
    r = redis.Redis(host="127.0.0.1", port=6379)
    users = [u.decode() if isinstance(u, bytes) else u for u in r.acl_users()]
    acl = [n for n in names if n in users]
    keys = [k for t in ids for k in r.scan_iter(match=f"{t.lower()}:*", count=1000)]
    for what, found in (("databases", dbs), ("roles", roles), ("Redis ACL users", acl), ("Redis keys", keys)):
        if found:
            notes.append(f"--purge left {len(found)} {what} behind, e.g. {found[:2]}")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adds", type=int, default=10)
    parser.add_argument("--backend", choices=("both", "embedded", "external"), default="both")
    parser.add_argument("--spawn", default="fork,exec", help="spawn modes, each a daemon of its own")
    args = parser.parse_args()
    modes = [m.strip() for m in args.spawn.split(",") if m.strip()]
    backends = ["embedded", "external"] if args.backend == "both" else [args.backend]
    results, skipped = [], []
    with b.bench_session("add") as (root, cleanup):
        for backend in backends:
            if backend == "external" and not b.external_servers_reachable():
                skipped.append("external: skipped, PostgreSQL at 127.0.0.1:5432 (trust auth for postgres) "
                               "or Redis at 127.0.0.1:6379 is not reachable")
                continue
            for mode in modes:
                sub = b.Cleanup()
                cleanup.push(f"{backend} {mode} setup", sub.run)
                try:
                    results.append(run_backend(root / f"{backend}-{mode}", sub, backend, args.adds, mode))
                except RuntimeError as e:
                    results.append({"backend": f"{backend} {mode}", "add": [], "remove": [],
                                    "failures": [str(e)], "notes": []})
                sub.run()
        floor = b.summary([_wall([b.PYTHON, "-c", "import oraclectl.main"]) for _ in range(5)])["median"]

    b.header("tenant add: `oraclectl tenant add ID --services all` (waits for both services READY)",
             [f"{args.adds} adds in a row per backend, each a new tenant (2 databases, 2 roles, "
              "2 Redis ACL users, migrations, 2 children); wall time includes starting oraclectl "
              f"(python + imports alone: {floor * 1000:.0f} ms)"])
    rows = []
    for res in results:
        for verb in ("add", "remove"):
            vals = res[verb]
            if vals:
                s = b.summary(vals)
                label = "tenant add --services all" if verb == "add" else "tenant remove --purge --yes"
                rows.append((res["backend"], label, s["n"], s["median"], s["p90"], s["min"], s["max"]))
        if "daemon_start_s" in res:
            rows.append((res["backend"], "daemon start, no tenants (READY=1)", 1, res["daemon_start_s"],
                         res["daemon_start_s"], res["daemon_start_s"], res["daemon_start_s"]))
    print(b.table(["backend spawn", "operation", "n", "median s", "p90 s", "min s", "max s"], rows, digits=2))
    for res in results:
        if res["add"]:
            med = b.summary(res["add"])["median"]
            print(f"{res['backend']}: tenant add median {med:.2f} s vs goal {GOAL_S:g} s: "
                  f"{'met' if med < GOAL_S else 'NOT met'} (ratio {med / GOAL_S:.2f}); "
                  f"vs the original < 30 min: {ORIGINAL_S / med:.0f}x faster")
    for line in skipped:
        print(line)
    for res in results:
        for note in res["notes"]:
            print(f"NOTE {res['backend']}: {note}")
        for f in res["failures"]:
            print(f"FAILED {res['backend']}: {f}")


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
