"""What every fault-injection test checks: the tenants the fault was not aimed at did not move."""

from __future__ import annotations

import json

from tests.harness import Daemon


def service_rows(daemon: Daemon) -> list[dict]:  # type: ignore[type-arg]
    result = daemon.ctl("--json", "status", check=False)
    if result.returncode != 0:  # a loaded 2-core machine can miss oraclectl's deadline
        return []
    return [r for r in json.loads(result.stdout) if r["state"] != "invalid"]


def ready_pids(daemon: Daemon, tenants: list[str]) -> dict[str, int] | None:
    """{tenant/service: pid} when every service of these tenants runs and is ready, else None."""
    rows = [r for r in service_rows(daemon) if r["tenant"] in tenants]
    if len(rows) != 2 * len(tenants) or not all(r["state"] == "running" and r["ready"] for r in rows):
        return None
    return {f"{r['tenant']}/{r['service']}": r["pid"] for r in rows}
