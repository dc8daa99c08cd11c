"""The PostgreSQL and Redis servers tenants live on: embedded (started here) or external (configured).

`async with open_servers(settings) as servers:` starts whatever is embedded before any tenant
and stops it after the last one; external servers are only described (their reachability is
checked, and reported as Unavailable, when provisioning touches them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from oraclewad.errors import InvalidArgument
from oraclewad.files import ensure_crossable_dir
from oraclewad.provision.embedded import EmbeddedPostgres, EmbeddedRedis
from oraclewad.provision.keeper import EmbeddedServer, Guard, ServerKeeper
from oraclewad.settings import Settings


@dataclass(frozen=True)
class RedisParams:
    """How to reach Redis: a credential-free URL plus credentials and TLS files kept apart."""

    url: str                      # redis://host:port/db, rediss://..., or unix:///path/redis.sock
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_url(cls, url: str, ca_file: Path | None = None, cert_file: Path | None = None,
                 key_file: Path | None = None) -> RedisParams:
        """Split credentials out of a configured URL (redis://user:pass@host:port/0)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise InvalidArgument(f"[redis] url must start with redis://, rediss:// or unix:// "
                                  f"(got {parts.scheme or 'no scheme'}://)", field="redis.url")
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        return cls(url=clean, username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   ca_file=ca_file, cert_file=cert_file, key_file=key_file)

    @property
    def address(self) -> str:
        """For messages: host:port or the socket path, never credentials."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"

    def tls_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.ca_file:
            kw["ssl_ca_certs"] = str(self.ca_file)
        if self.cert_file:
            kw["ssl_certfile"] = str(self.cert_file)
        if self.key_file:
            kw["ssl_keyfile"] = str(self.key_file)
        return kw

    def client(self, username: str | None = None, password: str | None = None, *,
               single_connection: bool = False) -> redis.Redis:
        """A client as the admin, or as another user when both username and password are given.
        single_connection: every command on one connection (so a SELECT holds for the next)."""
        if username is None:
            username, password = self.username, self.password
        # No built-in retries: an unreachable server should surface at once as Unavailable;
        # provision_with_retry does the waiting.
        return redis.Redis.from_url(self.url, username=username, password=password,
                                    socket_timeout=10, socket_connect_timeout=5,
                                    retry=Retry(NoBackoff(), 0), single_connection_client=single_connection,
                                    **self.tls_kwargs())


def postgres_address(dsn: str) -> str:
    """For messages: host:port (or socket path) of a DSN, never its password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable dsn)"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return f"{host}:{port}"


@dataclass
class Servers:
    """Admin access to both servers, and the embedded handles (None when external)."""

    postgres_dsn: str = field(repr=False)   # may carry an external admin password
    redis: RedisParams
    embedded_postgres: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None
    keeper: ServerKeeper | None = None      # run keeper.run() as a daemon task (embedded only)

    @property
    def postgres_address(self) -> str:
        if self.embedded_postgres is not None:
            return self.embedded_postgres.address
        return postgres_address(self.postgres_dsn)

    @classmethod
    def start(cls, settings: Settings) -> Servers:
        """Blocking: start what is embedded, describe what is external. Undo everything on failure."""
        emb_pg: EmbeddedPostgres | None = None
        emb_redis: EmbeddedRedis | None = None
        try:
            if settings.postgres.dsn is None:
                ensure_crossable_dir(settings.shared_dir)
                emb_pg = EmbeddedPostgres(settings.state_dir / "postgres", settings.shared_dir / "pg",
                                          state_dir=settings.state_dir)
                emb_pg.start()
                dsn = emb_pg.admin_dsn
            else:
                dsn = settings.postgres.dsn
                try:
                    psycopg.conninfo.conninfo_to_dict(dsn)
                except psycopg.ProgrammingError:
                    # psycopg's message may quote the DSN (and a password): keep it out.
                    raise InvalidArgument("[postgres] dsn is not a valid libpq connection string or URL",
                                          field="postgres.dsn") from None
            if settings.redis.url is None:
                ensure_crossable_dir(settings.shared_dir)
                emb_redis = EmbeddedRedis(settings.state_dir / "redis", settings.secrets_dir,
                                          settings.shared_dir / "redis", settings.redis.maxmemory)
                emb_redis.start()
                rp = RedisParams(url=emb_redis.url, username=emb_redis.username, password=emb_redis.password)
            else:
                rp = RedisParams.from_url(settings.redis.url, settings.redis.ca_file,
                                          settings.redis.cert_file, settings.redis.key_file)
        except BaseException:
            for emb in (emb_redis, emb_pg):
                if emb is not None:
                    with contextlib.suppress(Exception):
                        emb.stop()
            raise
        return cls(postgres_dsn=dsn, redis=rp, embedded_postgres=emb_pg, embedded_redis=emb_redis)

    def stop(self) -> None:
        """Blocking: stop the embedded servers (Redis first, it saves; then PostgreSQL)."""
        errors: list[BaseException] = []
        for emb in (self.embedded_redis, self.embedded_postgres):
            if emb is not None:
                try:
                    emb.stop()
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
