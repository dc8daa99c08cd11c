"""Importing 100,000 campaign recipients: CSV text -> the broadcast child's API -> PostgreSQL (COPY).

The real broadcast child (standalone: its own JSON config, admin socket) on a scratch database of the
machine's PostgreSQL (or an embedded one), no Evolution. A generated CSV like a shop's export:
`;`-separated, BOM, quoted names, phones written five ways, a `cidade` column, 1 % impossible numbers
and 1 % repeated ones. Timed: one POST of the whole file to the admin socket (what a tenant's tool
does on the public port), and the file in oraclectl's 1.5 MB parts (what `oraclectl campaign import`
sends, each part a request), each into a fresh campaign, 3 runs each; then parsing + phone
normalisation alone, in this process. Goal: under 3 s for 100,000.

Run: .venv/bin/python bench/broadcast_import.py [--rows 100000] [--backend embedded|external]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b
import httpx
import psycopg

from oraclectl.campaign import csv_parts
from oraclewad.services.broadcast.recipients import parse_csv

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO / "oraclewad" / "services" / "broadcast" / "migrations"
GOAL_S = 3.0
CITIES = ("São Paulo", "Rio de Janeiro", "Belo Horizonte", "Recife", "Porto Alegre", "Curitiba")
FIRST = ("Ana", "João", "Maria", "José", "Francisca", "Antônio", "Carla", "Luís", "Beatriz", "Paulo")
LAST = ("Silva", "Santos", "Oliveira", "Souza", "Lima", "Pereira", "Ferreira", "Costa")


def make_csv(rows: int, seed: int = 7) -> str:
    rnd = random.Random(seed)
    out = ["\ufeffTelefone;Nome;Cidade\n"]
    ddds = (11, 21, 31, 41, 51, 61, 71, 81, 85, 92)
    for i in range(rows):
        ddd, number = rnd.choice(ddds), 900000000 + rnd.randrange(100000000)
        if i % 100 == 99:
            phone = str(rnd.randrange(1000, 99999))                       # impossible
        elif i % 100 == 98 and i > 200:
            phone = f"55{ddds[0]}{900000000 + (i * 7919) % 100000000}"     # repeated below
        else:
            phone = rnd.choice((f"55{ddd}{number}", f"({ddd}) {number // 10000}-{number % 10000:04d}",
                                f"+55 {ddd} {number}", f"{ddd}{number}", f"0{ddd} {number}"))
        name = f'"{rnd.choice(FIRST)} {rnd.choice(LAST)}; {i}"' if i % 10 == 0 else \
            f"{rnd.choice(FIRST)} {rnd.choice(LAST)}"
        out.append(f"{phone};{name};{rnd.choice(CITIES)}\n")
        if i % 100 == 98 and i > 200:
            out.append(f"{phone};Repetido;Recife\n")
    return "".join(out)


def admin_dsn(backend: str, cleanup: b.Cleanup, root: Path) -> str:
    if backend == "external":
        return os.environ.get("OWA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    from oraclewad.provision.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(root / "pg")
    server.start()
    cleanup.push("stop the embedded PostgreSQL", server.stop)
    return server.admin_dsn


def scratch_db(admin: str, cleanup: b.Cleanup) -> str:
    dsn, drop = b.scratch_database(admin, "owa_bench_bc_", MIGRATIONS)
    cleanup.push(f"drop database {psycopg.conninfo.conninfo_to_dict(dsn)['dbname']}", drop)
    return dsn


def start_child(root: Path, dsn: str, cleanup: b.Cleanup) -> Path:
    sock = root / "admin.sock"
    config = root / "broadcast.json"
    config.write_text(json.dumps({"tenant": "bench", "service": "broadcast", "display_name": "Bench",
                                  "http": {"host": "127.0.0.1", "port": b.free_port()},
                                  "postgres": {"dsn": dsn, "pool_max": 4}, "log_level": "warning"}))
    config.chmod(0o600)
    env = {"PATH": os.environ.get("PATH", ""), "OWA_CONFIG": str(config), "OWA_TENANT": "bench",
           "OWA_ADMIN_SOCKET": str(sock)}
    proc = subprocess.Popen([sys.executable, "-m", "oraclewad.services.broadcast"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cleanup.push("stop the broadcast child", lambda: (proc.terminate(), proc.wait(10)))
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            output = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise SystemExit(f"FAILED: the broadcast child did not start: {output}")
        time.sleep(0.1)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=("external", "embedded"))
    a = parser.parse_args()
    backend = a.backend or ("external" if b.external_servers_reachable() else "embedded")
    with b.bench_session("bcimport") as (root, cleanup):
        text = make_csv(a.rows)
        b.log(f"CSV: {a.rows} rows, {len(text.encode()) / 1e6:.1f} MB; backend {backend}")
        dsn = scratch_db(admin_dsn(backend, cleanup, root), cleanup)
        sock = start_child(root, dsn, cleanup)
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://broadcast",
                              timeout=120)
        cleanup.push("close the client", client.close)
        rows, answers = [], {}
        for mode in ("one request", "oraclectl parts"):
            times = []
            for run in range(a.runs):
                created = client.post("/campaigns", json={"name": f"{mode} {run}", "templates": "Oi"})
                cid = created.json()["id"]
                bodies = ([{"csv": text}] if mode == "one request" else
                          [{"csv": part, "first_line": first} for part, first in csv_parts(text)])
                t = time.perf_counter()
                totals = {"accepted": 0, "invalid": 0, "duplicate": 0}
                for body in bodies:
                    response = client.post(f"/campaigns/{cid}/recipients", json=body)
                    if response.status_code != 200:
                        raise SystemExit(f"FAILED: import answered {response.status_code}: "
                                         f"{response.text[:500]}")
                    for k in totals:
                        totals[k] += response.json()[k]
                times.append(time.perf_counter() - t)
                answers[mode] = (totals, len(bodies))
            rows.append((f"{mode} ({answers[mode][1]} request{'s' * (answers[mode][1] > 1)})", a.rows,
                         statistics.median(times), min(times), a.rows / statistics.median(times)))
        t = time.perf_counter()
        parsed = parse_csv(text)
        rows.append(("parse + normalise only (in process)", a.rows, time.perf_counter() - t, float("nan"),
                     a.rows / (time.perf_counter() - t)))
        b.header(f"broadcast import, {a.rows} recipients ({backend} PostgreSQL, {a.runs} runs)",
                 [f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
                  "(other work on the machine slows every figure)",
                  f"outcome: {answers['one request'][0]} (parse alone: {len(parsed.rows)} rows, "
                  f"{len(parsed.invalid)} invalid, {len(parsed.duplicate)} duplicate)"])
        print(b.table(("path", "rows", "median s", "min s", "rows/s"), rows, digits=2))
        best = min(r[2] for r in rows[:2])
        print(f"goal: {a.rows} recipients under {GOAL_S:.0f} s: median {best:.2f} s -> "
              + ("met" if best < GOAL_S else "NOT met"))


if __name__ == "__main__":
    main()
