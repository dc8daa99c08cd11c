"""Broadcast fixtures: a migrated scratch database (the machine's PostgreSQL, or an embedded one with
OWA_TEST_BACKEND=embedded), the tenant's shared database (suppression list), and the real broadcast
child serving its campaign API on a real port and its admin socket."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

from oraclewad import migrations
from oraclewad.provision.embedded import EmbeddedPostgres
from tests.broadcast.support import BroadcastChild, broadcast_config
from tests.conftest import EXTERNAL
from tests.recovery.support import admin_dsn_external
from tests.services.helpers import base_env, listening_socket, spawn, write_config

MIGRATIONS = Path(__file__).resolve().parents[2] / "oraclewad" / "services" / "broadcast" / "migrations"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    if EXTERNAL:
        yield admin_dsn_external()
        return
    base = Path(tempfile.mkdtemp(prefix="owa-bc-pg-"))
    server = EmbeddedPostgres(base / "pg")
    server.start()
    try:
        yield server.admin_dsn
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def broadcast_db(pg_admin: str) -> Iterator[str]:
    name = "owa_bc_" + secrets.token_hex(6)
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(pg_admin, dbname=name)
    with psycopg.connect(dsn) as conn:
        migrations.apply(conn, migrations.discover(MIGRATIONS))
    try:
        yield dsn
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def shared_dsn(pg_admin: str) -> Iterator[str]:
    """The tenant's shared database, made by the provisioning code (reached as admin here)."""
    from oraclewad.provision import shared

    tenant = "t" + secrets.token_hex(5)

    def admin(dbname: str | None = None) -> psycopg.Connection:
        kw = {"dbname": dbname} if dbname else {}
        return psycopg.connect(pg_admin, autocommit=True, **kw)

    shared.setup(admin, tenant, [])
    yield psycopg.conninfo.make_conninfo(pg_admin, dbname=shared.database(tenant))
    shared.purge(admin, tenant)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="owa-bc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start_broadcast(nursery: trio.Nursery, workdir: Path) -> AsyncIterator[Callable[..., Any]]:
    """start(dsn, **config overrides) -> BroadcastChild, the real child on a daemon-style socket."""
    children: list[BroadcastChild] = []

    async def start(dsn: str, **overrides: Any) -> BroadcastChild:
        config = broadcast_config(dsn, **overrides)
        sock = listening_socket()
        port = sock.getsockname()[1]
        cfgdir = workdir / f"c{len(children)}"
        cfgdir.mkdir()
        env = base_env(OWA_CONFIG=str(write_config(cfgdir, config)), OWA_TENANT=config["tenant"],
                       OWA_ADMIN_SOCKET=str(cfgdir / "admin.sock"), LISTEN_FDS="1", LISTEN_FDNAMES="http")
        child = BroadcastChild(spawn(nursery, "oraclewad.services.broadcast", env, sock), sock, port, config,
                               cfgdir / "admin.sock")
        children.append(child)
        await child.process.wait_log("ready", timeout=30)
        return child

    yield start
    for child in children:
        child.process.kill()
        child.sock.close()
