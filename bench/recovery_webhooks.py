"""Recovery: durable webhook ingest (requests/s, p50/p99) and webhook -> message latency for order.paid.

A real oraclewad with one tenant (recovery only; the machine's PostgreSQL when reachable, else the
embedded one) whose instance lives in an Evolution sandbox started here (`python -m
oraclewad.services.sandbox`, the same program `make run` uses).

1. Ingest: for --seconds, --concurrency HTTP/1.1 keep-alive connections (httpx, in this process)
   post signed `order.expired` webhooks (X-Webhook-Signature), each a new order, so every request
   is verified, validated, de-duplicated and committed to PostgreSQL before its 202 (the reminders
   are due 60 s later: nothing is sent while measuring). Bodies are signed before the clock starts.
   Goal (issue 11): at least 2,000 requests/s with p99 under 25 ms.
2. order.paid -> message: --paid sequential signed `order.paid` webhooks; the latency is from just
   before the POST to the time the sandbox recorded the sendText (the sandbox's own timestamp, same
   host clock). typing_delay_ms = 0 and min_gap = 0, so the figure is our pipeline only; with a
   typing delay configured, add it. Goal: under 200 ms plus the typing delay.

Run: .venv/bin/python bench/recovery_webhooks.py [--seconds 10] [--concurrency 32] [--paid 200]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b

GOAL_RPS, GOAL_P99_MS, GOAL_PAID_MS = 2000.0, 25.0, 200.0


def signed(secret: str, doc: dict) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(doc).encode()
    stamp = str(int(time.time() * 1000))
    sig = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return body, {"content-type": "application/json", "x-webhook-timestamp": stamp,
                  "x-webhook-signature": sig}


def order(event: str, oid: str, phone: str) -> dict:
    return {"event": event, "data": {"id": oid, "product": {"title": "Rifa Moto 0km"},
                                      "user": {"name": "Maria Silva", "phone": phone},
                                      "pixCode": "00020126580014br.gov.bcb.pix0136abc", "total": 49.9}}


def start_sandbox(root: Path, cleanup: b.Cleanup) -> tuple[str, str]:
    port, key = b.free_port(), secrets.token_urlsafe(24)
    log = open(root / "sandbox.log", "ab")  # noqa: SIM115 (closed by cleanup)
    proc = subprocess.Popen([str(b.BIN / "python"), "-m", "oraclewad.services.sandbox",
                             "--listen", f"127.0.0.1:{port}", "--api-key", key],
                            stdout=log, stderr=log, start_new_session=True)
    cleanup.push("stop the sandbox", lambda: (proc.terminate(), proc.wait(10), log.close()))
    url = f"http://127.0.0.1:{port}"
    import httpx
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/_sandbox/messages", timeout=1).raise_for_status()
            return url, key
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = (root / "sandbox.log").read_text()[-2000:]
                raise RuntimeError(f"the sandbox did not start: {tail}") from None
            time.sleep(0.1)


async def ingest(url: str, requests: list[tuple[bytes, dict[str, str]]], seconds: float,
                 concurrency: int) -> tuple[list[float], dict[int, int], float]:
    import httpx
    import trio

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    it = iter(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t_end = 0.0
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                try:
                    body, headers = next(it)
                except StopIteration:
                    return
                t = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append((time.perf_counter() - t) * 1000)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        t_end = time.perf_counter() - t0
    return latencies, statuses, t_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="ingest duration (default 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections (default 32)")
    parser.add_argument("--paid", type=int, default=200, help="order.paid samples (default 200)")
    parser.add_argument("--backend", choices=("auto", "external", "embedded"), default="auto")
    args = parser.parse_args()
    backend = args.backend
    if backend == "auto":
        backend = "external" if b.external_servers_reachable() else "embedded"

    import httpx
    import trio

    with b.bench_session("recovery") as (root, cleanup):
        tid = b.unique_id("rw")
        if backend == "external":
            cleanup.push("drop provisioned databases/users", lambda: b.drop_external([tid]))
        sandbox, api_key = start_sandbox(root, cleanup)
        httpx.post(f"{sandbox}/_sandbox/instances",
                   json={"name": f"{tid}-1", "state": "open"}).raise_for_status()
        key_file = root / "evolution.key"
        key_file.write_text(api_key)
        key_file.chmod(0o600)
        base = b.free_port_block(4)
        config = b.write_config(root, backend=backend, port_base=base, port_count=4)
        b.write_tenant(root, tid, '["recovery"]',
                       f'[recovery]\ninstances = ["{tid}-1"]\ntyping_delay_ms = 0\nmin_gap = 0\n'
                       f'daily_cap = 1000000\n'
                       f'[evolution]\nurl = "{sandbox}"\napi_key_file = "{key_file}"\n')
        daemon = b.Daemon(root, config, cleanup)
        b.log(f"starting oraclewad with one tenant ({backend} PostgreSQL) and a sandbox at {sandbox}")
        daemon.start(timeout=120)
        daemon.wait_all_ready(1, 60)
        creds = json.loads(daemon.ctl("--json", "tenant", "secrets", tid).stdout)
        url, secret = creds["webhook_url"], creds["secret"]

        # 1. ingest. Enough pre-signed requests for 5,000 req/s; their timestamps stay fresh (300 s).
        count = int(5000 * args.seconds) + 1000
        b.log(f"signing {count} order.expired webhooks")
        requests = [signed(secret, order("order.expired", f"bench-{uuid.uuid4().hex}",
                                         f"11 9{i % 10000:04d}-{i // 10000 % 10000:04d}"))
                    for i in range(count)]
        b.log("warm-up: 500 requests")
        trio.run(ingest, url, requests[-500:], 60.0, 8)
        b.log(f"ingest: {args.seconds:g}s with {args.concurrency} connections")
        latencies, statuses, wall = trio.run(ingest, url, requests[:-500], args.seconds, args.concurrency)
        ok = statuses.get(202, 0)
        rps = len(latencies) / wall
        s = b.summary(latencies)
        # Every acknowledged event is in the database (count the orders the bench created).
        status, answer = 0, {}
        r = daemon.ctl("--json", "recovery", tid, "--since", "1h", check=False)
        if r.returncode == 0:
            answer = json.loads(r.stdout)
            status = answer.get("orders_expired", 0)

        # 2. order.paid -> message in the sandbox.
        b.log(f"order.paid -> message: {args.paid} sequential webhooks")
        httpx.delete(f"{sandbox}/_sandbox/messages")
        paid_ms: list[float] = []
        lost = 0
        for i in range(args.paid):
            phone = f"11 98{i:03d}-{i:04d}"
            body, headers = signed(secret, order("order.paid", f"paid-{uuid.uuid4().hex}", phone))
            t = time.time()
            response = httpx.post(url, content=body, headers=headers, timeout=10)
            if response.status_code != 202:
                lost += 1
                continue
            number = "55" + "".join(ch for ch in phone if ch.isdigit())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                sent = [m for m in httpx.get(f"{sandbox}/_sandbox/messages").json() if m["number"] == number]
                if sent:
                    paid_ms.append((float(sent[0]["at"]) - t) * 1000)
                    break
                time.sleep(0.002)
            else:
                lost += 1
            httpx.delete(f"{sandbox}/_sandbox/messages")

    p = b.summary(paid_ms) if paid_ms else {}
    b.header("recovery webhooks", [f"backend: {backend} PostgreSQL; one tenant, one recovery child; "
                                   f"load generator in this process (httpx, {args.concurrency} connections); "
                                   f"{os.cpu_count()} cores shared with everything else on the machine"])
    print(b.table(["measure", "n", "req/s", "p50 ms", "p99 ms", "max ms"], [
        ["ingest order.expired (202, committed)", len(latencies), rps, s["median"], s["p99"], s["max"]],
        ["order.paid -> sendText in sandbox", len(paid_ms), "", p.get("median", 0), p.get("p99", 0),
         p.get("max", 0)],
    ]))
    print(f"ingest statuses: {dict(sorted(statuses.items()))}; orders in the report: {status} "
          f"(acknowledged {ok} + 500 warm-up)")
    print(f"ingest goal >= {GOAL_RPS:g} req/s: {'met' if rps >= GOAL_RPS else 'NOT met'} ({rps:.0f}); "
          f"p99 < {GOAL_P99_MS:g} ms: {'met' if s['p99'] < GOAL_P99_MS else 'NOT met'} ({s['p99']:.1f})")
    if paid_ms:
        print(f"order.paid goal p99 < {GOAL_PAID_MS:g} ms + typing delay (0 here): "
              f"{'met' if p['p99'] < GOAL_PAID_MS else 'NOT met'} ({p['p99']:.1f}); not delivered: {lost}")


if __name__ == "__main__":
    b.ensure_venv()
    main()
