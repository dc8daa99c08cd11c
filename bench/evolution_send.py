"""sendText through the Evolution client to the sandbox: what one send costs us, without WhatsApp.

A sandbox process on loopback (tests/support/sandbox.py), one EvolutionClient (httpx, trio), one
open instance. Sequential sends (one in flight, as the pacer allows per instance) and 8 instances
sending at once, after 50 warm-up sends, delay 0: p50/p99 latency and sends/s. Also a send with
`delay` 300 ms, to show the call is held for the typing delay and no longer. This is the floor
under recovery's "webhook to message" figure (goal < 200 ms plus the typing delay).

Run: .venv/bin/python bench/evolution_send.py [--sends 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b
import httpx
import trio

from oraclewad.services.evolution import EvolutionClient
from tests.support.sandbox import SandboxProcess

GOAL_MS = 200.0


async def run(url: str, key: str, sends: int) -> list[tuple[str, int, float, float, float]]:
    rows = []
    async with EvolutionClient(url, key) as evo:
        for _ in range(50):
            await evo.send_text("bench-1", "5511900000000", "aquecimento")
        latencies: list[float] = []
        start = time.perf_counter()
        for i in range(sends):
            t = time.perf_counter()
            await evo.send_text("bench-1", f"55119{i:08d}", f"Olá {i}, seu PIX expirou")
            latencies.append((time.perf_counter() - t) * 1000)
        wall = time.perf_counter() - start
        rows.append(("sequential, 1 instance", sends, b.percentile(latencies, 50),
                     b.percentile(latencies, 99), sends / wall))

        latencies = []
        per = sends // 8

        async def instance(n: int) -> None:
            for i in range(per):
                t = time.perf_counter()
                await evo.send_text(f"bench-{n}", f"55118{n}{i:07d}", "oi")
                latencies.append((time.perf_counter() - t) * 1000)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(1, 9):
                nursery.start_soon(instance, n)
        wall = time.perf_counter() - start
        rows.append(("8 instances at once", per * 8, b.percentile(latencies, 50),
                     b.percentile(latencies, 99), per * 8 / wall))

        t = time.perf_counter()
        await evo.send_text("bench-1", "5511900000001", "digitando...", delay_ms=300)
        rows.append(("one send, delay 300 ms", 1, (time.perf_counter() - t) * 1000, float("nan"),
                     float("nan")))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=1000)
    args = parser.parse_args()
    sandbox = SandboxProcess.start()
    try:
        for n in range(1, 9):
            httpx.post(f"{sandbox.url}/_sandbox/instances", json={"name": f"bench-{n}", "state": "open"})
        rows = trio.run(run, sandbox.url, sandbox.api_key, args.sends)
    finally:
        sandbox.stop()
    print(b.table(("case", "sends", "p50 ms", "p99 ms", "sends/s"), rows))
    p99 = rows[0][3]
    verdict = "met" if p99 < GOAL_MS else "NOT met"
    print(f"sequential p99 {p99:.1f} ms vs the {GOAL_MS:g} ms webhook-to-message budget: {verdict} "
          "(this is only the Evolution leg; recovery's bench measures the whole path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
