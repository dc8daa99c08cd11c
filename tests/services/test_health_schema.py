"""/healthz's schema check in a running service: the runtime re-runs the checks every 2 s, and a
passing schema check is trusted for SCHEMA_EVERY (PostgreSQL itself is asked every time), so a
schema that turns incompatible under the service fails its health within that, and a failing
check is re-run every time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from oraclewad import migrations
from oraclewad.services.admin import SCHEMA_EVERY, Health
from oraclewad.services.context import ServiceContext
from tests.services.sending import SERVICES, drop_database, make_database


@pytest.fixture
def scratch(pg_admin: str) -> Iterator[str]:
    dsn = make_database(pg_admin, "recovery")
    try:
        yield dsn
    finally:
        drop_database(pg_admin, dsn)


async def test_a_passing_schema_check_is_trusted_for_a_while_and_a_failing_one_rechecked(scratch):
    wanted = migrations.discover(Path(SERVICES / "recovery" / "migrations"))
    probes: list[str] = []

    def probe(conn: psycopg.Connection) -> str:
        probes.append("checked")
        migrations.check(conn, wanted)
        return f"at version {migrations.current_version(conn)}"

    now = [1000.0]
    pool = ConnectionPool(scratch, min_size=0, max_size=1, open=True)
    ctx = ServiceContext(tenant="imperio", service="recovery", release="t", display_name="Império",
                         config={}, pg=pool, redis=None, redis_prefix="x", metrics=CollectorRegistry(),
                         limiter=trio.CapacityLimiter(1))
    health = Health(ctx, probe, clock=lambda: now[0])
    try:
        code, body = await health.snapshot()
        assert code == 200 and body["checks"]["schema"]["ok"], body
        detail = body["checks"]["schema"]["detail"]
        now[0] += SCHEMA_EVERY - 1
        code, body = await health.snapshot()
        assert (code, body["checks"]["schema"]["detail"], len(probes)) == (200, detail, 1)
        # A newer release's migration this one cannot read lands under the running service.
        with psycopg.connect(scratch, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations (version, name, backward_compatible)"
                         " VALUES (9999, 'incompatible', false)")
        now[0] += 2
        code, body = await health.snapshot()
        assert code == 503 and not body["checks"]["schema"]["ok"], body
        assert "newer than this release understands" in body["checks"]["schema"]["detail"]
        code, body = await health.snapshot()
        assert code == 503 and len(probes) == 3     # a failing check is asked again each time
    finally:
        pool.close()
