"""Recovery fixtures: a migrated scratch database (the machine's PostgreSQL, or an embedded one with
OWA_TEST_BACKEND=embedded) and the real recovery child serving on a real port."""

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
from tests.conftest import EXTERNAL
from tests.recovery.support import RecoveryChild, admin_dsn_external, recovery_config
from tests.services.helpers import base_env, listening_socket, spawn, write_config

MIGRATIONS = Path(__file__).resolve().parents[2] / "oraclewad" / "services" / "recovery" / "migrations"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    """Admin DSN of the PostgreSQL the recovery tests use."""
    if EXTERNAL:
        yield admin_dsn_external()
        return
    base = Path(tempfile.mkdtemp(prefix="owa-rec-pg-"))
    server = EmbeddedPostgres(base / "pg")
    server.start()
    try:
        yield server.admin_dsn
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def make_database(admin: str, folder: Path = MIGRATIONS) -> str:
    name = "owa_rec_" + secrets.token_hex(6)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
    with psycopg.connect(dsn) as conn:
        migrations.apply(conn, migrations.discover(folder))
    return dsn


def drop_database(admin: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def recovery_db(pg_admin: str) -> Iterator[str]:
    dsn = make_database(pg_admin)
    try:
        yield dsn
    finally:
        drop_database(pg_admin, dsn)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="owa-rec-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start_recovery(nursery: trio.Nursery, workdir: Path) -> AsyncIterator[Callable[..., Any]]:
    """start(dsn, **config overrides) -> RecoveryChild, the real child on a daemon-style inherited socket."""
    children: list[RecoveryChild] = []

    async def start(dsn: str, **overrides: Any) -> RecoveryChild:
        config = recovery_config(dsn, **overrides)
        sock = listening_socket()
        port = sock.getsockname()[1]
        cfgdir = workdir / f"c{len(children)}"
        cfgdir.mkdir()
        env = base_env(OWA_CONFIG=str(write_config(cfgdir, config)), OWA_TENANT=config["tenant"],
                       OWA_ADMIN_SOCKET=str(cfgdir / "admin.sock"), LISTEN_FDS="1", LISTEN_FDNAMES="http")
        child = RecoveryChild(spawn(nursery, "oraclewad.services.recovery", env, sock), sock, port, config,
                              cfgdir / "admin.sock", env)
        children.append(child)
        await child.process.wait_log("ready", timeout=30)
        return child

    yield start
    for child in children:
        child.process.kill()
        child.sock.close()
