"""The daemon with its data servers: embedded by default, and a PostgreSQL outage during `tenant add`."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.harness import copy_example, unique_id, wait_for
from tests.support.servers import private_postgres, private_tls_redis


def test_embedded_servers_run_the_example_tenant(make_daemon, sandbox) -> None:
    # The `make run` path: no [postgres]/[redis] in the config, imperio's instances open in the sandbox.
    root = Path(tempfile.mkdtemp(prefix="owa-embedded-"))  # pgserver's user must traverse it
    try:
        daemon = make_daemon(root, backend="embedded")
        copy_example(root, sandbox.url, sandbox.api_key)
        for name in ("imperio-1", "imperio-2"):
            httpx.post(f"{sandbox.url}/_sandbox/instances",
                       json={"name": name, "state": "open"}).raise_for_status()
        daemon.start()

        def healthy() -> list | None:
            result = daemon.ctl("--json", "health", "imperio", check=False)
            rows = json.loads(result.stdout) if result.returncode == 0 else []
            return rows if len(rows) == 2 and all(h["status"] == "ok" for h in rows) else None

        rows = wait_for(healthy, timeout=60, what="imperio healthy")
        for row in rows:
            assert row["checks"]["postgres"]["ok"] and row["checks"]["redis"]["ok"]
            assert row["checks"]["instances"]["ok"]
        assert (root / "state" / "postgres").is_dir() and (root / "state" / "redis").is_dir()

        # The README's next step: the signed curl example of `tenant secrets`, pasted, becomes a
        # thank-you sent by imperio-1 within seconds.
        shown = daemon.ctl("tenant", "secrets", "imperio").stdout
        pasted = subprocess.run(["bash", "-c", shown[shown.index("body='"):]], capture_output=True,
                                text=True, timeout=30)
        assert '"accepted"' in pasted.stdout, pasted.stdout + pasted.stderr
        sent = wait_for(lambda: httpx.get(f"{sandbox.url}/_sandbox/messages").json(), timeout=10,
                        what="the example's thank-you")
        assert [(m["instance"], m["number"]) for m in sent] == [("imperio-1", "5511987654321")]
        assert daemon.stop() == 0
        # Health probes and relayed calls are not narrated request by request in the daemon's log.
        assert "HTTP Request:" not in daemon.stderr()
        assert not list((root / "state" / "postgres").glob("postmaster.pid"))  # stopped with the daemon
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_postgres():  # type: ignore[no-untyped-def]
    """A PostgreSQL this test can stop and start, given to the daemon as an external server."""
    with private_postgres(shared_socket=True) as server:
        yield server


def test_postgres_down_during_tenant_add_is_unavailable_then_heals(make_daemon, own_postgres) -> None:
    daemon = make_daemon(extra=f"[postgres]\ndsn = {own_postgres.admin_dsn!r}\n", backend="embedded")
    steady = unique_id()
    (daemon.root / "tenants.d").mkdir(exist_ok=True)
    daemon.start()
    daemon.ctl("tenant", "add", steady, "--timeout", "60")
    steady_pids = {r["service"]: r["pid"] for r in daemon.ctl_json("status", steady)}
    own_postgres.stop()
    tid = unique_id()
    result = daemon.ctl("tenant", "add", tid, "--timeout", "3", check=False)
    assert result.returncode == 1
    assert "unreachable" in result.stderr + result.stdout
    rows = {r["service"]: r for r in daemon.ctl_json("status", tid)}
    assert rows["recovery"]["state"] == "unavailable"
    assert "UNAVAILABLE" in rows["recovery"]["message"]
    # The tenant that was already running keeps its processes, and says its database is away.
    wait_for(lambda: all(r["state"] == "unhealthy" and "postgres" in r["message"]
                         for r in daemon.ctl_json("status", steady)),
             timeout=20, what="the running tenant to be shown unhealthy (postgres)")
    assert {r["service"]: r["pid"] for r in daemon.ctl_json("status", steady)} == steady_pids
    own_postgres.start()
    wait_for(lambda: all(r["state"] == "running" and r["ready"] for r in daemon.ctl_json("status", tid)),
             timeout=60, what="the tenant to be provisioned and started once PostgreSQL is back")
    wait_for(lambda: all(r["state"] == "running" and r["ready"] for r in daemon.ctl_json("status", steady)),
             timeout=30, what="the running tenant to be ready again")
    assert {r["service"]: r["pid"] for r in daemon.ctl_json("status", steady)} == steady_pids


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("redis-server")),
                    reason="needs openssl and redis-server to run a Redis that speaks TLS")
def test_a_tls_redis_with_a_private_ca_serves_the_tenant_services(make_daemon) -> None:
    """[redis] url = "rediss://..." with ca_file: provisioning and the tenant's children both
    verify the server against that CA (a child that ignored it failed every start with exit 69)."""
    with private_tls_redis() as tls:
        daemon = make_daemon(extra=f'[redis]\nurl = "{tls.url}"\nca_file = "{tls.ca_file}"\n',
                             backend="embedded")
        (daemon.root / "tenants.d").mkdir(exist_ok=True)
        daemon.start()
        tid = unique_id()
        daemon.ctl("tenant", "add", tid, "--services", "recovery", "--timeout", "60")
        wait_for(lambda: all(r["state"] == "running" and r["ready"] for r in daemon.ctl_json("status", tid)),
                 timeout=30, what="recovery running on the TLS Redis")
        health = daemon.ctl_json("health", tid)
        assert health[0]["checks"]["redis"]["ok"], health
        assert daemon.stop() == 0
