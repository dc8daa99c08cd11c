"""Fixtures and helpers of the tests that run a real sending service (recovery, broadcast): one
PostgreSQL (the machine's, or an embedded one with OWA_TEST_BACKEND=embedded), migrated scratch
databases, the tenant's shared database as provisioning makes it, and the real child on a
daemon-style inherited socket. tests/conftest.py loads it as a plugin, so every folder sees its
fixtures; `database_fixture`/`starter_fixture` make a service's own."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
from psycopg import sql

from oraclewad import migrations
from oraclewad.provision.embedded import EmbeddedPostgres
from oraclewad.services.evolution import webhook_headers
from tests.conftest import EXTERNAL
from tests.services.helpers import REPO, Child, base_env, listening_socket, spawn, write_config

SERVICES = REPO / "oraclewad" / "services"


def admin_dsn_external() -> str:
    return os.environ.get("OWA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    """Admin DSN of the PostgreSQL the service tests use."""
    if EXTERNAL:
        yield admin_dsn_external()
        return
    base = Path(tempfile.mkdtemp(prefix="owa-svc-pg-"))
    server = EmbeddedPostgres(base / "pg")
    server.start()
    try:
        yield server.admin_dsn
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def make_database(admin: str, folder: Path | str = "recovery") -> str:
    """A scratch database with a service's migrations (`folder`: a service name or a directory)."""
    folder = SERVICES / folder / "migrations" if isinstance(folder, str) else folder
    name = "owa_t_" + secrets.token_hex(6)
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
def shared_databases(pg_admin: str) -> Iterator[Callable[[], str]]:
    """make() -> the shared database of a new tenant, made by the provisioning code (the children
    reach it as admin here; tests/provision/test_shared.py checks the roles' grants)."""
    from oraclewad.provision import shared

    def admin(dbname: str | None = None) -> psycopg.Connection:
        kw = {"dbname": dbname} if dbname else {}
        return psycopg.connect(pg_admin, autocommit=True, **kw)

    tenants: list[str] = []

    def make() -> str:
        tenants.append("t" + secrets.token_hex(5))
        shared.setup(admin, tenants[-1], [])
        return psycopg.conninfo.make_conninfo(pg_admin, dbname=shared.database(tenants[-1]))

    yield make
    for tenant in tenants:
        shared.purge(admin, tenant)


@pytest.fixture
def shared_dsn(shared_databases: Callable[[], str]) -> str:
    return shared_databases()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short and under /tmp: unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="owa-svc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class ServiceChild:
    process: Child
    sock: Any
    port: int
    config: dict[str, Any]
    admin_socket: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self) -> httpx.AsyncClient:
        """The admin socket, as the daemon's ServiceCall reaches it."""
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.admin_socket)),
                                 base_url=f"http://{self.config['service']}", timeout=30)


@pytest.fixture
async def start_service(nursery: trio.Nursery, workdir: Path) -> AsyncIterator[Callable[..., Any]]:
    """start(config) -> ServiceChild: config["service"]'s real child, ready."""
    children: list[ServiceChild] = []

    async def start(config: dict[str, Any]) -> ServiceChild:
        sock = listening_socket()
        cfgdir = workdir / f"c{len(children)}"
        cfgdir.mkdir()
        env = base_env(OWA_CONFIG=str(write_config(cfgdir, config)), OWA_TENANT=config["tenant"],
                       OWA_ADMIN_SOCKET=str(cfgdir / "admin.sock"), LISTEN_FDS="1", LISTEN_FDNAMES="http")
        child = ServiceChild(spawn(nursery, f"oraclewad.services.{config['service']}", env, sock), sock,
                             sock.getsockname()[1], config, cfgdir / "admin.sock", env)
        children.append(child)
        await child.process.wait_log("ready", timeout=30)
        return child

    yield start
    for child in children:
        child.process.kill()
        child.sock.close()


def service_config(service: str, dsn: str, **fields: Any) -> dict[str, Any]:
    """A child config as the daemon writes it for tenant imperio's `service`, with `fields`."""
    return {"tenant": "imperio", "service": service, "display_name": "Império",
            "http": {"host": "127.0.0.1", "port": 0}, "postgres": {"dsn": dsn, "pool_max": 4}, **fields}


def merged(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`config` with `overrides` (a table is merged one level deep)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


async def hook_up(sandbox: Any, child: ServiceChild, jwt_key: str, *names: str) -> None:
    """Point the instances' webhooks at the child, as `oraclectl instances connect` does."""
    async with httpx.AsyncClient(base_url=sandbox.url, headers={"apikey": sandbox.api_key}) as http:
        for name in names:
            response = await http.post(f"/webhook/set/{name}", json={"webhook": {
                "enabled": True, "url": child.url + "/webhooks/evolution",
                "headers": webhook_headers(jwt_key),
                "events": ["MESSAGES_UPDATE", "MESSAGES_UPSERT", "CONNECTION_UPDATE"]}})
            assert response.status_code in (200, 201), response.text


def rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


async def wait_rows(dsn: str, query: str, expected: Any, timeout: float = 20.0,
                    args: tuple[Any, ...] = ()) -> Any:
    with trio.fail_after(timeout):
        while (got := rows(dsn, query, *args)) != expected:
            await trio.sleep(0.1)
    return got


async def wait_messages(sandbox: Any, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    with trio.fail_after(timeout):
        while len(found := await sandbox.messages()) < count:
            await trio.sleep(0.1)
    return found


def database_fixture(service: str) -> Any:
    """A `<service>_db` fixture: a scratch database with the service's migrations, dropped after."""
    @pytest.fixture(name=f"{service}_db")
    def database(pg_admin: str) -> Iterator[str]:
        dsn = make_database(pg_admin, service)
        try:
            yield dsn
        finally:
            drop_database(pg_admin, dsn)
    return database


def starter_fixture(service: str, config: Callable[..., dict[str, Any]]) -> Any:
    """A `start_<service>` fixture: start(dsn, **config overrides) -> the ready ServiceChild."""
    @pytest.fixture(name=f"start_{service}")
    def starter(start_service: Callable[..., Any]) -> Callable[..., Any]:
        async def start(dsn: str, **overrides: Any) -> ServiceChild:
            return await start_service(config(dsn, **overrides))
        return start
    return starter
