"""Faults of the embedded PostgreSQL and Redis (issue 7 item 5, issue 8 item 5).

Each test runs its own embedded servers (never the machine's shared ones) and checks what an
operator sees: the services say `unhealthy` with the failing check (status, /metrics, events,
the daemon's STATUS= line) within seconds, and come back without a daemon restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.helpers import ready_pids, service_rows
from tests.harness import free_port, unique_id, wait_for, write_tenant


@pytest.fixture
def embedded_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="owa-faults-"))  # pgserver's user must traverse it
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def redis_pid(root: Path) -> int:
    return int((root / "state" / "redis" / "redis.pid").read_text())


def postmaster_pid(root: Path) -> int:
    return int((root / "state" / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])


def unhealthy_rows(daemon, tenants: list[str], check: str):  # type: ignore[no-untyped-def]
    rows = [r for r in service_rows(daemon) if r["tenant"] in tenants]
    ok = len(rows) == 2 * len(tenants) and all(
        r["state"] == "unhealthy" and not r["ready"] and check in r["message"] for r in rows)
    return rows if ok else None


def test_a_frozen_redis_makes_services_unhealthy_everywhere_then_ready_again(make_daemon,
                                                                             embedded_root) -> None:
    port = free_port()
    daemon = make_daemon(embedded_root, backend="embedded",
                         extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    a, b = unique_id(), unique_id()
    write_tenant(daemon.root, a)
    write_tenant(daemon.root, b)
    daemon.start()
    before = wait_for(lambda: ready_pids(daemon, [a, b]), timeout=60, what="both tenants ready")

    victim = redis_pid(embedded_root)
    os.kill(victim, signal.SIGSTOP)
    try:
        rows = wait_for(lambda: unhealthy_rows(daemon, [a, b], "redis"), timeout=15,
                        what="every service unhealthy, naming redis")
        assert {f"{r['tenant']}/{r['service']}": r["pid"] for r in rows} == before  # nobody restarted
        text = daemon.ctl("status").stdout
        assert "unhealthy" in text and "redis" in text
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert f'oraclewa_service_up{{service="recovery",tenant="{a}"}} 0.0' in scrape
        assert f'oraclewa_service_state{{service="recovery",state="unhealthy",tenant="{a}"}} 1.0' in scrape
        lines = daemon.ctl("--json", "events", "-n", "200").stdout.splitlines()
        events = [json.loads(line) for line in lines]
        assert any(e.get("state") == "unhealthy" and "redis" in e.get("message", "") for e in events), events
        daemon.wait_message_containing("unhealthy", timeout=15)
    finally:
        os.kill(victim, signal.SIGCONT)
    after = wait_for(lambda: ready_pids(daemon, [a, b]), timeout=30, what="ready again after SIGCONT")
    assert after == before
