"""The seam between provisioning and the data servers, like httpx's `BaseTransport`.

`PostgresServer` and `RedisServer` are all that `Servers` and the `Provisioner` know of a server:
where it is (for messages), how the admin reaches it, and `start`/`stop`. Two implementations
each: `ExternalPostgres`/`ExternalRedis` here (configured; starting checks the configuration and
stopping does nothing) and `EmbeddedPostgres`/`EmbeddedRedis` in `embedded.py` (a process of
ours). A new kind of server (a managed service, a test server) is one more class, nothing else.
The connection strings a tenant role gets are assembled here, once (`role_conninfo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from oraclewad.errors import InvalidArgument


class DataServer(Protocol):
    @property
    def address(self) -> str:
        """For messages: host:port or a socket path, never credentials."""
        ...

    def start(self) -> None:
        """Blocking: an embedded server starts; an external one is only checked."""
        ...

    def stop(self) -> None: ...


class PostgresServer(DataServer, Protocol):
    @property
    def admin_dsn(self) -> str:
        """The admin's connection string (may hold an external admin's password)."""
        ...


class RedisServer(DataServer, Protocol):
    @property
    def params(self) -> RedisParams:
        """How the admin reaches it."""
        ...


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


def role_conninfo(admin_dsn: str, role: str, password: str, dbname: str) -> dict[str, Any]:
    """A tenant role's connection parameters: the admin's address and options (TLS, timeouts)
    with the role's own credentials, never the admin's user, password or passfile."""
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    for key in ("user", "password", "passfile", "dbname"):
        params.pop(key, None)
    return {**params, "user": role, "password": password, "dbname": dbname}


def role_dsn(admin_dsn: str, role: str, password: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(**role_conninfo(admin_dsn, role, password, dbname))


class ExternalPostgres:
    """A PostgreSQL server of the operator's, at [postgres] dsn."""

    def __init__(self, dsn: str) -> None:
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # psycopg's message may quote the DSN (and a password): keep it out.
            raise InvalidArgument("[postgres] dsn is not a valid libpq connection string or URL",
                                  field="postgres.dsn") from None
        self._dsn = dsn

    def __repr__(self) -> str:
        return f"ExternalPostgres({self.address!r})"

    @property
    def admin_dsn(self) -> str:
        return self._dsn

    @property
    def address(self) -> str:
        return postgres_address(self._dsn)

    def start(self) -> None:
        """Nothing to start: whether it is reachable shows when provisioning touches it."""

    def stop(self) -> None:
        """Not ours to stop."""


@dataclass(frozen=True)
class ExternalRedis:
    """A Redis server of the operator's, at [redis] url."""

    params: RedisParams

    @property
    def address(self) -> str:
        return self.params.address

    def start(self) -> None:
        """Nothing to start: whether it is reachable shows when provisioning touches it."""

    def stop(self) -> None:
        """Not ours to stop."""
