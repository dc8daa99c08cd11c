"""Fixtures: the provisioning backends (embedded servers, and the machine's servers when reachable)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from oraclewad.provision.provisioner import Provisioner
from oraclewad.provision.servers import Servers
from oraclewad.settings import Settings, load_settings

# The machine's servers (the production path); override to point the "external" tests elsewhere.
EXTERNAL_DSN = os.environ.get("OWA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
EXTERNAL_REDIS = os.environ.get("OWA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def make_settings(base: Path, dsn: str | None = None, redis_url: str | None = None) -> Settings:
    base.mkdir(parents=True, exist_ok=True)
    text = '[daemon]\nstate_dir = "state"\n'
    if dsn:
        text += f"[postgres]\ndsn = {dsn!r}\n"
    if redis_url:
        text += f"[redis]\nurl = {redis_url!r}\n"
    (base / "oraclewad.toml").write_text(text)
    return load_settings(base / "oraclewad.toml")


@dataclass
class Backend:
    kind: str              # "embedded" or "external"
    settings: Settings
    servers: Servers

    def admin(self, dbname: str | None = None) -> psycopg.Connection:
        kw = {"dbname": dbname} if dbname else {}
        return psycopg.connect(self.servers.postgres_dsn, autocommit=True, **kw)

    def redis_admin(self) -> redis.Redis:
        return self.servers.redis.client()


@pytest.fixture(scope="session")
def embedded_backend() -> Iterator[Backend]:
    # Not under pytest's basetemp: as root, pgserver's system user must traverse the parents, and
    # any other pytest session on the machine resets /tmp/pytest-of-root to 0700.
    base = Path(tempfile.mkdtemp(prefix="owa-provision-"))
    settings = make_settings(base)
    servers = Servers.start(settings)
    try:
        yield Backend("embedded", settings, servers)
    finally:
        servers.stop()
        shutil.rmtree(base, ignore_errors=True)


def _external_reachable() -> str | None:
    if os.environ.get("OWA_TEST_BACKEND") == "embedded":
        return "OWA_TEST_BACKEND=embedded: as on a machine without PostgreSQL/Redis"
    try:
        psycopg.connect(EXTERNAL_DSN, connect_timeout=2).close()
    except psycopg.Error as exc:
        return f"external PostgreSQL not reachable: {str(exc).splitlines()[0]}"
    try:
        with redis.Redis.from_url(EXTERNAL_REDIS, socket_connect_timeout=2) as r:
            r.ping()
    except redis.RedisError as exc:
        return f"external Redis not reachable: {exc}"
    return None


@pytest.fixture(scope="session")
def external_backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    reason = _external_reachable()
    if reason:
        pytest.skip(reason)
    settings = make_settings(tmp_path_factory.mktemp("external"), EXTERNAL_DSN, EXTERNAL_REDIS)
    return Backend("external", settings, Servers.start(settings))


@pytest.fixture(scope="session", params=["embedded", pytest.param("external", marks=pytest.mark.external)])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
async def prov(backend: Backend) -> Provisioner:
    return Provisioner(backend.settings, backend.servers)


@pytest.fixture
def migration_dirs(tmp_path: Path) -> dict[str, Path]:
    rec = tmp_path / "migrations" / "recovery"
    rec.mkdir(parents=True)
    (rec / "0001_orders.sql").write_text(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, code text NOT NULL);\n"
        "CREATE INDEX orders_code ON orders (code);\n")
    (rec / "0002_status.sql").write_text(
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';\n")
    bro = tmp_path / "migrations" / "broadcast"
    bro.mkdir(parents=True)
    (bro / "0001_contacts.sql").write_text("CREATE TABLE contacts (phone text PRIMARY KEY);\n")
    return {"recovery": rec, "broadcast": bro}


EMBEDDED_ONLY = pytest.mark.parametrize("backend", ["embedded"], indirect=True)


@pytest.fixture
async def tenant_ids(prov: Provisioner) -> AsyncIterator[Callable[[], str]]:
    """Factory of unique tenant ids (mixed case and '-', to exercise the derivation); purged afterwards
    so repeated runs against the shared external servers leave nothing behind."""
    made: list[str] = []

    def make() -> str:
        tid = f"T-{secrets.token_hex(5)}"
        made.append(tid)
        return tid

    yield make
    for tid in made:
        await prov.purge(tid)

