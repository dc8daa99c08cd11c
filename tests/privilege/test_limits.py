"""One tenant cannot starve the others of the shared servers (own embedded servers: the tests
exhaust them, which must never happen to the machine's shared PostgreSQL and Redis)."""

from __future__ import annotations

import json
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from oraclewad.settings import load_settings
from tests.harness import free_port_base, unique_id, wait_for, write_tenant

METRICS_PORT = free_port_base() + 175


@pytest.fixture
def embedded_pair(make_daemon) -> Iterator[tuple]:  # type: ignore[type-arg]
    root = Path(tempfile.mkdtemp(prefix="owa-limits-"))  # pgserver's user must traverse it
    try:
        daemon = make_daemon(root, backend="embedded",
                             extra='[postgres]\nconnection_limit = 12\n[redis]\nmaxmemory = "64mb"\n'
                                   f'[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\nusage_interval = 0.5\n')
        a, b = unique_id("a"), unique_id("b")
        write_tenant(root, a)
        write_tenant(root, b)
        daemon.start()
        yield daemon, a, b
        daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def healthy(daemon, tenant: str) -> bool:  # type: ignore[no-untyped-def]
    result = daemon.ctl("--json", "health", tenant, check=False)
    rows = json.loads(result.stdout) if result.returncode == 0 else []
    return len(rows) == 2 and all(h["status"] == "ok" for h in rows)


def secrets(daemon, tenant: str, service: str = "recovery") -> dict:  # type: ignore[no-untyped-def,type-arg]
    return tomllib.loads((daemon.root / "state" / "secrets" / f"{tenant}.toml").read_text())[service]


def test_one_tenant_exhausting_its_connections_leaves_the_others_healthy(embedded_pair) -> None:
    daemon, a, b = embedded_pair
    wait_for(lambda: healthy(daemon, a) and healthy(daemon, b), timeout=90, what="both healthy")
    shared = load_settings(daemon.config).shared_dir / "pg"
    sa, sb = secrets(daemon, a), secrets(daemon, b)
    held: list[psycopg.Connection] = []
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            for _ in range(600):       # far more than the server's 500
                held.append(psycopg.connect(host=str(shared), user=sa["role"], password=sa["password"],
                                            dbname=sa["database"], connect_timeout=5))
        assert len(held) <= 12
        # Another tenant still gets in, and its services stay healthy.
        psycopg.connect(host=str(shared), user=sb["role"], password=sb["password"],
                        dbname=sb["database"], connect_timeout=5).close()
        assert healthy(daemon, b)
    finally:
        for conn in held:
            conn.close()


def test_a_large_value_or_a_script_cannot_fail_another_tenants_redis_calls(embedded_pair) -> None:
    daemon, a, b = embedded_pair
    wait_for(lambda: healthy(daemon, a) and healthy(daemon, b), timeout=90, what="both healthy")
    sock = str(load_settings(daemon.config).shared_dir / "redis" / "redis.sock")
    sa, sb = secrets(daemon, a), secrets(daemon, b)
    ra = redis.Redis(unix_socket_path=sock, username=sa["redis_username"], password=sa["redis_password"])
    rb = redis.Redis(unix_socket_path=sock, username=sb["redis_username"], password=sb["redis_password"])
    with pytest.raises(redis.RedisError):
        ra.set(sa["key_prefix"] + "huge", b"x" * (20 * 1024 * 1024))     # over proto-max-bulk-len
    with pytest.raises(redis.exceptions.NoPermissionError):
        ra.eval("while true do end", 0)                                  # would BUSY everyone
    rb.set(sb["key_prefix"] + "k", "v")
    assert rb.get(sb["key_prefix"] + "k") == b"v"
    admin_password = (daemon.root / "state" / "secrets" / "embedded-redis.secret").read_text().strip()
    info = redis.Redis(unix_socket_path=sock, username="oraclewad", password=admin_password
                       ).config_get("maxmemory*")
    assert info["maxmemory"] == str(64 * 1024 * 1024) and info["maxmemory-policy"] == "noeviction"
    assert healthy(daemon, a) and healthy(daemon, b)


def test_each_tenants_redis_keys_and_memory_are_metrics(embedded_pair) -> None:
    daemon, a, _ = embedded_pair
    wait_for(lambda: healthy(daemon, a), timeout=90, what="a healthy")
    sock = str(load_settings(daemon.config).shared_dir / "redis" / "redis.sock")
    sa = secrets(daemon, a)
    ra = redis.Redis(unix_socket_path=sock, username=sa["redis_username"], password=sa["redis_password"])
    for i in range(50):
        ra.set(f"{sa['key_prefix']}k{i}", b"x" * 10_000)

    def figures() -> dict[str, float] | None:
        body = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
        found = {}
        for line in body.splitlines():
            for name in ("oraclewa_tenant_redis_keys", "oraclewa_tenant_redis_memory_bytes"):
                if line.startswith(f'{name}{{tenant="{a}"}}'):
                    found[name] = float(line.split()[-1])
        return found if found.get("oraclewa_tenant_redis_keys", 0) >= 50 else None

    found = wait_for(figures, timeout=30, what="usage metrics")
    assert found["oraclewa_tenant_redis_memory_bytes"] >= 50 * 10_000
