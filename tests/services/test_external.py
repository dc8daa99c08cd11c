"""Against the machine's PostgreSQL (127.0.0.1:5432, user postgres, trust) and Redis (127.0.0.1:6379);
each test skips with the reason when its server is not there."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis
from psycopg import sql

from oraclewad import migrations
from tests.services.helpers import base_env, write_config

pytestmark = pytest.mark.external

if os.environ.get("OWA_TEST_BACKEND") == "embedded":
    pytest.skip("OWA_TEST_BACKEND=embedded: as on a machine without PostgreSQL/Redis",
                allow_module_level=True)
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
PASSWORD = "pw-" + secrets.token_hex(8)


@pytest.fixture
def scratch_db() -> Iterator[str]:
    """A fresh database, dropped afterwards; yields its DSN (postgres user, with a password that
    trust auth ignores but the child must keep out of its logs)."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 as postgres: {exc}")
    name = "owa_test_" + secrets.token_hex(6)
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def redis_user() -> Iterator[tuple[str, str]]:
    """A throwaway ACL user limited to its prefix, like the ones provisioning creates."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at 127.0.0.1:6379: {exc}")
    user = "owa_test_" + secrets.token_hex(6)
    prefix = f"{user}:"
    client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{PASSWORD}", f"~{prefix}*",
                           f"&{prefix}*", "+@connection", "+@read", "+@write")
    try:
        yield user, prefix
    finally:
        client.execute_command("ACL", "DELUSER", user)
        client.close()


def _env(workdir, config: dict) -> dict[str, str]:
    return base_env(OWA_CONFIG=str(write_config(workdir, config)), OWA_TENANT="imperio",
                    OWA_ADMIN_SOCKET=str(workdir / "admin.sock"))


async def _healthz(workdir) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(uds=str(workdir / "admin.sock"))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as admin:
        return await admin.get("/healthz")


async def test_healthz_ok_with_real_postgres_and_redis(launch, workdir, scratch_db, redis_user):
    from oraclewad.services.recovery.app import MIGRATIONS

    with psycopg.connect(scratch_db, autocommit=True) as conn:
        shipped = migrations.discover(MIGRATIONS)
        assert migrations.apply(conn, shipped) == [m.version for m in shipped]
    user, prefix = redis_user
    config = {"tenant": "imperio", "release": "ext", "http": {"port": 0},
              "postgres": {"dsn": scratch_db, "pool_max": 2},
              "redis": {"url": REDIS_URL, "username": user, "password": PASSWORD, "prefix": prefix}}
    child = launch(_env(workdir, config))
    await child.wait_log("ready")

    response = await _healthz(workdir)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    checks = body["checks"]
    assert checks["postgres"]["ok"] and checks["postgres"]["latency_ms"] >= 0
    assert checks["schema"]["ok"] and checks["schema"]["detail"] == f"at version {shipped[-1].version}"
    assert checks["redis"]["ok"] and checks["redis"]["detail"] == "PONG"

    child.signal(signal.SIGTERM)
    assert await child.wait() == 0
    out = child.stdout + child.stderr.decode()
    assert PASSWORD not in out
    assert f"postgres:***@127.0.0.1:5432/{scratch_db.rsplit('/', 1)[1]}" in out  # redacted, still useful


async def test_schema_older_than_required_refuses_to_start(launch, workdir, scratch_db):
    config = {"tenant": "imperio", "http": {"port": 0}, "postgres": {"dsn": scratch_db}}
    child = launch(_env(workdir, config))
    assert await child.wait() == 78
    message = child.stderr.decode().strip()
    assert message.startswith("schema: database at 127.0.0.1:5432")
    from oraclewad.services.recovery.app import MIGRATIONS

    needs = max(m.version for m in migrations.discover(MIGRATIONS))
    assert f"is at schema version 0, this release needs {needs}" in message
    assert PASSWORD not in message + child.stdout


async def test_context_helpers_run_in_threads(scratch_db, redis_user):
    """ctx.db commits when fn returns and rolls back when it raises; ctx.kv hands fn the client."""
    import redis
    import trio
    from prometheus_client import CollectorRegistry
    from psycopg_pool import ConnectionPool

    from oraclewad.services.runtime import ServiceContext

    user, prefix = redis_user
    pool = ConnectionPool(scratch_db, min_size=0, max_size=2, open=True)
    client = redis.Redis.from_url(REDIS_URL, username=user, password=PASSWORD)
    ctx = ServiceContext(tenant="imperio", service="recovery", release="t", display_name="Império",
                         config={}, pg=pool, redis=client, redis_prefix=prefix,
                         metrics=CollectorRegistry(), limiter=trio.CapacityLimiter(2))
    try:
        await ctx.db(lambda conn: conn.execute("CREATE TABLE t (v int)"))
        await ctx.db(lambda conn, v: conn.execute("INSERT INTO t VALUES (%s)", (v,)), 1)

        def insert_then_fail(conn: psycopg.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await ctx.db(insert_then_fail)
        assert await ctx.db(lambda conn: conn.execute("SELECT array_agg(v) FROM t").fetchone()[0]) == [1]

        key = ctx.redis_prefix + "k"
        assert await ctx.kv(lambda r, k: r.set(k, "v", ex=10), key)
        assert await ctx.kv(lambda r, k: r.get(k), key) == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError):  # the ACL keeps it in its prefix
            await ctx.kv(lambda r: r.get("someone-else:k"))
    finally:
        pool.close()
        client.close()


def test_a_pool_starts_its_threads_at_its_first_use(scratch_db):
    """The runtime's pools (services/pools.py) cost a service start nothing: no thread until the
    first connection is asked for, and a closed pool stays closed."""
    import threading

    from psycopg_pool import PoolClosed

    from oraclewad.services.pools import OpenOnUse

    before = threading.active_count()
    pool = OpenOnUse(scratch_db, min_size=0, max_size=2, timeout=5.0)
    assert threading.active_count() == before
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert threading.active_count() > before
    pool.close()
    with pytest.raises(PoolClosed):
        pool.getconn()
    unused = OpenOnUse(scratch_db, min_size=0, max_size=2, timeout=5.0)
    unused.close()
    with pytest.raises(PoolClosed), unused.connection():
        pass
    assert threading.active_count() == before


def test_a_pooled_connection_the_server_closed_is_replaced_unseen_after_it_sat_idle(scratch_db, monkeypatch):
    """The pool's check (an empty query) is skipped for a connection back from a use less than
    pools.TRUSTED_FOR ago: a server-side close within that window fails that one use (as it would
    mid-use), and the pool replaces the connection; after the window it is replaced unseen."""
    from oraclewad.services import pools

    def kill(pid: int) -> None:
        with psycopg.connect(scratch_db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
            while admin.execute(alive, (pid,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.01)

    pool = pools.OpenOnUse(scratch_db, min_size=0, max_size=1, timeout=5.0,
                           check=pools.OpenOnUse.check_unless_fresh)
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        kill(pid)
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")          # returned a moment ago: not checked
        with pool.connection() as conn:       # the broken one was replaced
            pid = conn.info.backend_pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
        kill(pid)
        monkeypatch.setattr(pools, "TRUSTED_FOR", 0.0)   # as if it had sat idle past the window
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != pid
    finally:
        pool.close()
