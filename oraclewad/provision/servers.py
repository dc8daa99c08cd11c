"""The PostgreSQL and Redis servers tenants live on: embedded (started here) or external (configured),
behind the seam of provision.dataservers.

`async with open_servers(settings) as servers:` starts whatever is embedded before any tenant
and stops it after the last one; external servers are only described (their reachability is
checked, and reported as Unavailable, when provisioning touches them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio

from oraclewad.files import ensure_crossable_dir
from oraclewad.provision.dataservers import (
    DataServer,
    ExternalPostgres,
    ExternalRedis,
    PostgresServer,
    RedisParams,
    RedisServer,
    postgres_address,
    role_conninfo,
    role_dsn,
)
from oraclewad.provision.embedded import EmbeddedPostgres, EmbeddedRedis
from oraclewad.provision.keeper import EmbeddedServer, Guard, ServerKeeper
from oraclewad.settings import Settings

# RedisParams and postgres_address live in dataservers; importers of this module keep finding them.
__all__ = ["RedisParams", "Servers", "open_servers", "postgres_address"]


@dataclass
class Servers:
    """Both servers, each embedded or external (provision.dataservers: the seam)."""

    postgres: PostgresServer
    redis_server: RedisServer
    keeper: ServerKeeper | None = None      # run keeper.run() as a daemon task (embedded only)

    @property
    def postgres_dsn(self) -> str:
        return self.postgres.admin_dsn

    @property
    def postgres_address(self) -> str:
        return self.postgres.address

    @property
    def redis(self) -> RedisParams:
        return self.redis_server.params

    @property
    def embedded_postgres(self) -> EmbeddedPostgres | None:
        return self.postgres if isinstance(self.postgres, EmbeddedPostgres) else None

    @property
    def embedded_redis(self) -> EmbeddedRedis | None:
        return self.redis_server if isinstance(self.redis_server, EmbeddedRedis) else None

    def role_conninfo(self, role: str, password: str, dbname: str) -> dict[str, Any]:
        return role_conninfo(self.postgres_dsn, role, password, dbname)

    def role_dsn(self, role: str, password: str, dbname: str) -> str:
        return role_dsn(self.postgres_dsn, role, password, dbname)

    @classmethod
    def start(cls, settings: Settings) -> Servers:
        """Blocking: start what is embedded, check what is external. Undo everything on failure."""
        postgres: PostgresServer
        redis_server: RedisServer
        if settings.postgres.dsn is None or settings.redis.url is None:
            ensure_crossable_dir(settings.shared_dir)
        if settings.postgres.dsn is None:
            postgres = EmbeddedPostgres(settings.state_dir / "postgres", settings.shared_dir / "pg",
                                        state_dir=settings.state_dir)
        else:
            postgres = ExternalPostgres(settings.postgres.dsn)
        if settings.redis.url is None:
            redis_server = EmbeddedRedis(settings.state_dir / "redis", settings.secrets_dir,
                                         settings.shared_dir / "redis", settings.redis.maxmemory)
        else:
            cfg = settings.redis
            params = RedisParams.from_url(cfg.url, cfg.ca_file, cfg.cert_file, cfg.key_file)
            redis_server = ExternalRedis(params)
        started: list[DataServer] = []
        try:
            for server in (postgres, redis_server):
                server.start()
                started.append(server)
        except BaseException:
            for server in reversed(started):
                with contextlib.suppress(Exception):
                    server.stop()
            raise
        return cls(postgres, redis_server)

    def stop(self) -> None:
        """Blocking: stop the embedded servers (Redis first, it saves; then PostgreSQL)."""
        errors: list[BaseException] = []
        for server in (self.redis_server, self.postgres):
            try:
                server.stop()
            except Exception as exc:  # still stop the other one
                errors.append(exc)
        if errors:
            raise errors[0]


@contextlib.asynccontextmanager
async def open_servers(settings: Settings) -> AsyncIterator[Servers]:
    """Start the embedded servers (if any) for the block; stop them when it exits, even if cancelled.

    Raises FailedPrecondition when an embedded server is needed but the 'embedded' extra is
    missing or the server fails to start.
    """
    servers = await trio.to_thread.run_sync(Servers.start, settings, abandon_on_cancel=False)
    embedded: list[EmbeddedServer] = [s for s in (servers.embedded_postgres, servers.embedded_redis)
                                      if s is not None]
    guard = Guard() if embedded else None
    if guard is not None:
        servers.keeper = ServerKeeper(embedded, guard)
    try:
        yield servers
    finally:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(servers.stop)
            finally:
                if guard is not None:
                    await trio.to_thread.run_sync(guard.close)
