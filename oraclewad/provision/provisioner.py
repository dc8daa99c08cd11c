"""Per tenant-service PostgreSQL database + role, Redis ACL user, credentials and migrations.

Idempotent and resumable: every step checks before it changes, passwords are stored before
they are set on a server, so a run cut short (server gone, daemon killed) is completed by the
next one, and a second run changes nothing.

Secrets never travel in argv or environments, and never appear in messages or logs: the
servers receive only a SCRAM verifier (PostgreSQL) or a SHA-256 hash (Redis ACL).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import random
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis
import trio
from psycopg import errors as pgerrors
from psycopg import sql

from oraclewad import migrations
from oraclewad.errors import FailedPrecondition, NotFound, Unavailable
from oraclewad.provision import shared
from oraclewad.provision.names import (
    SERVICE_RE,
    key_glob,
    key_prefix,
    resource_name,
    validate_service,
    validate_tenant_id,
)
from oraclewad.provision.secretstore import SecretStore, ServiceSecrets
from oraclewad.provision.servers import Servers
from oraclewad.settings import Settings
from oraclewad.tenants import ids

log = logging.getLogger("oraclewad.provision")
T = TypeVar("T")

StatusCallback = Callable[[str], None]

# Commands a tenant user may not run. @admin and @dangerous cover FLUSHALL, FLUSHDB, KEYS,
# CONFIG, DEBUG, ACL, SHUTDOWN, MONITOR, CLIENT LIST/KILL, INFO, SORT, MIGRATE...; SCAN,
# RANDOMKEY and PUBSUB CHANNELS are not in them but would show other tenants' key and channel
# names (phone numbers live in key names).
# @scripting (EVAL, EVALSHA, SCRIPT, FCALL): a busy script blocks the whole server for everyone,
# and once it has written, only SHUTDOWN NOSAVE ends it. This is the one list of what tenant
# users may not do; keep additions here.
_ACL_DENY = ["-@admin", "-@dangerous", "-@scripting", "-scan", "-randomkey", "-pubsub",
             # Confined to database 0: keys moved elsewhere would escape the prefix's purge.
             "-select", "+select|0", "-move", "-copy"]
# Redis 7 only (6.2 knows neither FUNCTION nor subcommand removal): functions and the script
# cache are shared by every user, so one tenant must not flush or kill what another runs.
# Connections a default per-role limit leaves for the daemon (provisioning, health checks, admin).
DAEMON_RESERVE = 10
# No tenant role gets fewer: a pool of 4, a migration and a health check must fit.
MIN_CONNECTION_LIMIT = 8
_ACL_DENY_7 = ["-function", "-script|flush", "-script|kill"]


def _scram_matches(stored: str | None, password: str) -> bool:
    """Whether a pg_authid SCRAM-SHA-256 verifier was made from `password` (no server round trip)."""
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", stored or "")
    if not m:
        return False
    try:
        iterations, salt = int(m[1]), base64.b64decode(m[2])
        stored_key = base64.b64decode(m[3])
    except ValueError:
        return False
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


def _pg_reason(exc: BaseException) -> str:
    """libpq's message boiled down to its cause, e.g. 'connection refused' (never holds the DSN)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    if "failed: " in first:
        first = first.rsplit("failed: ", 1)[1]
    first = first.removeprefix("connection failed: ").removeprefix("consuming input failed: ")
    if first.startswith("No such file or directory"):
        first = "no socket file (server not running)"
    return (first[:1].lower() + first[1:])[:200] or type(exc).__name__


def _redis_reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    for marker in ("Connection refused", "No such file or directory", "Timeout", "timed out"):
        if marker.lower() in text.lower():
            return {"No such file or directory": "no socket file (server not running)"}.get(
                marker, marker.lower())
    return text[:200] or type(exc).__name__


async def _together(calls: Sequence[tuple[Any, ...]]) -> None:
    """Run `fn(*args)` for each (fn, *args) side by side, every one to its end; then raise the
    first failure in the order given, so the error an operator sees does not depend on timing."""
    failures: list[BaseException | None] = [None] * len(calls)

    async def one(i: int, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            failures[i] = exc

    async with trio.open_nursery() as nursery:
        for i, (fn, *args) in enumerate(calls):
            nursery.start_soon(one, i, fn, *args)
    for exc in failures:
        if exc is not None:
            raise exc


class Provisioner:
    """Creates, completes and removes the server-side resources of tenants' services.

    One instance per daemon (it serialises work per tenant); all blocking I/O runs in worker
    threads bounded by `limiter`.
    """

    def __init__(self, settings: Settings, servers: Servers, *,
                 limiter: trio.CapacityLimiter | None = None,
                 known_services: Sequence[str] = ids.SERVICES) -> None:
        self.settings = settings
        self.servers = servers
        self.store = SecretStore(settings.secrets_dir)
        self.known_services = tuple(known_services)
        self._limiter = limiter or trio.CapacityLimiter(4)
        self._locks: dict[str, trio.Lock] = {}
        self._cache: dict[str, dict[str, ServiceSecrets]] = {}
        self._redis_major: int | None = None
        self.role_count = 0      # tenant roles the fleet runs (Fleet sets it): sizes the default limit

    # ---------------------------------------------------------------- public API

    def secrets_path(self, tenant_id: str) -> Path:
        return self.store.path(tenant_id)

    async def provision(self, tenant_id: str, services: Iterable[str],
                        migrations_dirs: Mapping[str, Path]) -> dict[str, list[int]]:
        """Make sure every service of the tenant has its database, role, ACL user, secrets and
        migrations; returns the migration versions applied now, per service.

        Raises InvalidArgument (bad id or service, before any I/O), Unavailable (a server is
        unreachable: retry later, see provision_with_retry) or FailedPrecondition (a server
        refused, or a migration failed).
        """
        services = list(dict.fromkeys(services))
        validate_tenant_id(tenant_id)
        for svc in services:
            validate_service(svc)
            resource_name(tenant_id, svc)  # length check
        async with self._lock(tenant_id):
            plans = await self._run(self._discover_all, services, migrations_dirs)
            creds = await self._run(self._ensure_secrets, tenant_id, services)
            applied: dict[str, list[int]] = {}

            async def shared_step(step: Callable[..., None], *args: Any) -> None:
                with self._pg_errors(f"set up {shared.database(tenant_id)}"):
                    await self._run(step, self._admin, tenant_id, *args)

            roles_done = trio.Event()
            roles_failed: list[str] = []
            waiting = len(services)

            async def service_db(svc: str) -> None:
                nonlocal waiting
                try:
                    await self._run(self._pg_setup, creds[svc])     # role and database
                except BaseException:
                    roles_failed.append(svc)
                    raise
                finally:
                    waiting -= 1
                    if waiting == 0:
                        roles_done.set()
                applied[svc] = await self._run(self._pg_migrate, creds[svc], plans[svc])

            async def shared_db() -> None:
                await shared_step(shared.create)
                await roles_done.wait()         # its grants name the service roles
                if not roles_failed:
                    await shared_step(shared.setup, [creds[s].role for s in services])

            # Side by side, each mostly a wait on a server (a CREATE DATABASE is 100-300 ms): each
            # service's database and then its migrations, both ACL users, the shared database.
            await _together([(service_db, svc) for svc in services]
                            + [(self._run, self._redis_setup, creds[svc]) for svc in services]
                            + ([(shared_db,)] if services else []))
            for svc in services:
                s = creds[svc]
                log.info("provisioned %s/%s: database %s, Redis user %s, prefix %s%s", tenant_id, svc,
                         s.database, s.redis_username, s.key_prefix,
                         f", applied migrations {applied[svc]}" if applied[svc] else "")
            return applied

    async def migrate(self, tenant_id: str, service: str, migrations_dir: Path) -> list[int]:
        """Apply one service's migrations from `migrations_dir` (a release's) in one transaction:
        on failure (FailedPrecondition) the database is as it was."""
        async with self._lock(tenant_id):
            plans = await self._run(self._discover_all, [service], {service: migrations_dir})
            creds = await self._run(self._ensure_secrets, tenant_id, [service])
            return await self._run(self._pg_migrate, creds[service], plans[service], True)

    async def schema(self, tenant_id: str, service: str) -> list[migrations.Applied]:
        """The migrations recorded in a service's database."""
        creds = await self._run(self._ensure_secrets, tenant_id, [service])
        return await self._run(self._pg_applied, creds[service])

    async def provision_with_retry(self, tenant_id: str, services: Iterable[str],
                                   migrations_dirs: Mapping[str, Path], *,
                                   on_status: StatusCallback | None = None,
                                   initial_delay: float = 1.0, max_delay: float = 60.0,
                                   jitter: float = 0.2, wait_first: bool = False) -> dict[str, list[int]]:
        """provision(), retried with exponential backoff (+-jitter) while a server is Unavailable.

        on_status gets "UNAVAILABLE: <reason>" before each wait and "OK" once provisioned, so the
        daemon can show it in status/health. Other errors are raised at once (retrying would not
        help). Cancel the surrounding scope to give up. wait_first: the caller's own attempt just
        failed, so the first one here comes after a wait too. Jitter keeps a fleet that lost its
        server from coming back all in the same instant.
        """
        services = list(services)
        delay = initial_delay
        if wait_first:
            await trio.sleep(delay * random.uniform(1 - jitter, 1 + jitter))
            delay = min(delay * 2, max_delay)
        while True:
            try:
                result = await self.provision(tenant_id, services, migrations_dirs)
            except Unavailable as exc:
                log.warning("provisioning %s: %s (next attempt in %.1f s)", tenant_id, exc, delay)
                if on_status is not None:
                    on_status(f"UNAVAILABLE: {exc}")
                await trio.sleep(delay * random.uniform(1 - jitter, 1 + jitter))
                delay = min(delay * 2, max_delay)
                continue
            if on_status is not None:
                on_status("OK")
            return result

    async def purge(self, tenant_id: str, services: Iterable[str] | None = None) -> list[str]:
        """Drop the services' databases and roles, delete their Redis keys and ACL users, and their
        secrets (the whole file once no service is left). Returns one line per thing removed.

        services=None means every service in the secrets file plus the known services, so a
        tenant whose secrets file was lost is still cleaned up. Re-running is harmless.
        """
        validate_tenant_id(tenant_id)
        asked = list(dict.fromkeys(services)) if services is not None else None
        for svc in asked or ():
            validate_service(svc)
        async with self._lock(tenant_id):
            stored = await self._run(self.store.load, tenant_id)
            chosen = asked if asked is not None else sorted(
                {svc for svc in stored if SERVICE_RE.fullmatch(svc)} | set(self.known_services))
            lines: list[str] = []
            # The shared database holds grants to the roles: it goes first (or loses their grants).
            with self._pg_errors(f"remove {shared.database(tenant_id)}"):
                if not set(self._parse(tenant_id, stored)) - set(chosen):
                    lines += await self._run(shared.purge, self._admin, tenant_id)
                else:
                    for svc in chosen:
                        await self._run(shared.revoke, self._admin, tenant_id, resource_name(tenant_id, svc))
            for svc in chosen:
                lines += await self._run(self._redis_purge, resource_name(tenant_id, svc),
                                         key_prefix(tenant_id, svc))
                lines += await self._run(self._pg_purge, resource_name(tenant_id, svc))
            remaining = {svc: s for svc, s in self._parse(tenant_id, stored).items() if svc not in chosen}
            had_file = self.store.path(tenant_id).exists()
            await self._run(self.store.save, tenant_id, remaining)
            if remaining:
                self._cache[ids.id_key(tenant_id)] = remaining
            else:
                self._cache.pop(ids.id_key(tenant_id), None)
                if had_file:
                    lines.append(f"removed secrets file {self.store.path(tenant_id)}")
            for line in lines:
                log.info("purge %s: %s", tenant_id, line)
            return lines

    async def kept(self, tenant_id: str, services: Iterable[str]) -> list[tuple[str, int]]:
        """What the servers still hold of a tenant: (description, bytes) per database that exists
        and per service with Redis keys (0 bytes: key counts only, sizes would need every key)."""
        validate_tenant_id(tenant_id)
        chosen = list(services)
        for svc in chosen:
            validate_service(svc)
        return await self._run(self._kept, tenant_id, chosen)

    def _kept(self, tenant_id: str, services: list[str]) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        names = [resource_name(tenant_id, svc) for svc in services]
        with self._pg_errors("measure databases"), self._admin() as conn:
            for name, size in conn.execute(
                    "SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname = ANY(%s) "
                    "ORDER BY datname", (names,)).fetchall():
                found.append((f"database {name}", int(size)))
        with self._redis_admin("to count keys") as client:
            for svc in services:
                prefix = key_prefix(tenant_id, svc)
                pattern = key_glob(prefix)
                count = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
                if count:
                    found.append((f"{count} Redis keys {prefix}*", 0))
        return found

    def child_config_fragment(self, tenant_id: str, service: str) -> dict[str, Any]:
        """The `postgres` and `redis` blocks of one child's (0600) config JSON.

        Children reach the servers at the admin's address (unix socket or host:port) with their
        own credentials. Raises NotFound when the service has not been provisioned.
        """
        validate_tenant_id(tenant_id)
        validate_service(service)
        s = self._cache.get(ids.id_key(tenant_id), {}).get(service)
        if s is None:
            # A small local file; read directly so this stays callable from sync code.
            s = self._parse(tenant_id, self.store.load(tenant_id)).get(service)
        if s is None:
            raise NotFound(f"{tenant_id}/{service} has no credentials yet: it has not been provisioned")
        dsn = self.servers.role_dsn(s.role, s.password, s.database)
        rp = self.servers.redis
        redis_block: dict[str, Any] = {"url": rp.url, "username": s.redis_username,
                                       "password": s.redis_password, "prefix": s.key_prefix}
        for key, value in (("ca_file", rp.ca_file), ("cert_file", rp.cert_file), ("key_file", rp.key_file)):
            if value is not None:
                redis_block[key] = str(value)
        shared_dsn = self.servers.role_dsn(s.role, s.password, shared.database(tenant_id))
        return {"postgres": {"dsn": dsn}, "redis": redis_block, "shared": {"dsn": shared_dsn}}

    # ---------------------------------------------------------------- helpers

    def _lock(self, tenant_id: str) -> trio.Lock:
        return self._locks.setdefault(ids.id_key(tenant_id), trio.Lock())

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _discover_all(self, services: list[str],
                      migrations_dirs: Mapping[str, Path]) -> dict[str, list[migrations.Migration]]:
        plans: dict[str, list[migrations.Migration]] = {}
        for svc in services:
            directory = migrations_dirs.get(svc)
            if directory is None:
                plans[svc] = []
                continue
            try:
                plans[svc] = migrations.discover(Path(directory))
            except (OSError, ValueError) as exc:
                raise FailedPrecondition(f"migrations of {svc}: {exc}") from exc
        return plans

    def _parse(self, tenant_id: str, raw: dict[str, dict[str, str]]) -> dict[str, ServiceSecrets]:
        """Complete entries only (a table missing a password is left for _ensure_secrets to fix)."""
        out: dict[str, ServiceSecrets] = {}
        for svc, t in raw.items():
            try:
                validate_service(svc)
            except Exception:
                continue
            if t.get("password") and t.get("redis_password"):
                out[svc] = ServiceSecrets(
                    database=resource_name(tenant_id, svc), role=resource_name(tenant_id, svc),
                    password=t["password"], redis_username=resource_name(tenant_id, svc),
                    redis_password=t["redis_password"], key_prefix=key_prefix(tenant_id, svc))
        return out

    def _ensure_secrets(self, tenant_id: str, services: list[str]) -> dict[str, ServiceSecrets]:
        """Stored credentials for every service, generating (and storing first) any that are missing."""
        raw = self.store.load(tenant_id)
        result: dict[str, ServiceSecrets] = {}
        changed = False
        for svc in services:
            t = raw.get(svc, {})
            name = resource_name(tenant_id, svc)
            s = ServiceSecrets(database=name, role=name,
                               password=t.get("password") or secrets.token_urlsafe(32),
                               redis_username=name,
                               redis_password=t.get("redis_password") or secrets.token_urlsafe(32),
                               key_prefix=key_prefix(tenant_id, svc))
            changed |= any(t.get(k) != v for k, v in (
                ("database", s.database), ("role", s.role), ("password", s.password),
                ("redis_username", s.redis_username), ("redis_password", s.redis_password),
                ("key_prefix", s.key_prefix)))
            result[svc] = s
        if changed:
            # Keep services we were not asked about (the file holds the whole tenant).
            everything = {**self._parse(tenant_id, raw), **result}
            self.store.save(tenant_id, everything)
        self._cache[ids.id_key(tenant_id)] = {**self._cache.get(ids.id_key(tenant_id), {}), **result}
        return result

    # ---- PostgreSQL

    @contextlib.contextmanager
    def _pg_errors(self, doing: str) -> Iterator[None]:
        addr = self.servers.postgres_address
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            state = getattr(exc, "sqlstate", None) or ""
            reason = _pg_reason(exc)
            if state and not state.startswith(("08", "57P")):
                # The server answered but cannot do it now (e.g. template1 in use, lock timeout).
                raise Unavailable(f"PostgreSQL at {addr} could not {doing}: "
                                  f"{exc.diag.message_primary or reason}; will retry") from None
            if "authentication failed" in reason or "pg_hba.conf" in reason:
                raise Unavailable(f"PostgreSQL at {addr} refused the login: {reason}; will retry") from None
            raise Unavailable(f"PostgreSQL at {addr} is unreachable: {reason}; will retry") from None
        except psycopg.Error as exc:
            detail = exc.diag.message_primary or _pg_reason(exc)
            raise FailedPrecondition(f"PostgreSQL at {addr} refused to {doing}: {detail}") from None

    def _admin(self, dbname: str | None = None) -> psycopg.Connection:
        kw: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if dbname is not None:
            kw["dbname"] = dbname
        return psycopg.connect(self.servers.postgres_dsn, **kw)

    def _pg_setup(self, s: ServiceSecrets) -> None:
        name = sql.Identifier(s.role)
        with self._pg_errors(f"set up {s.database}"):
            with self._admin() as conn:
                row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
                superuser = bool(row and row[0])
                self._ensure_role(conn, s, superuser)
                if not superuser:
                    # A CREATEROLE/CREATEDB admin must be a member of the role to make it a
                    # database owner (PG16) and to connect to its database below.
                    conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(name))
                row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                   (s.database,)).fetchone()
                if row is None:
                    with contextlib.suppress(pgerrors.DuplicateDatabase):  # lost a race: fine
                        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(s.database), name))
                elif row[0] != s.role:
                    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(s.database), name))
                # TEMPORARY is granted to PUBLIC by default too; the owner keeps both implicitly.
                conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(s.database)))
                conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(s.database), name))
            with self._admin(s.database) as conn:
                row = conn.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace "
                                   "WHERE nspname = 'public'").fetchone()
                # PG15+: public belongs to pg_database_owner, i.e. already to our role.
                if row is not None and row[0] not in (s.role, "pg_database_owner"):
                    conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(name))
                if row is not None:
                    conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")

    def connection_limit(self, conn: psycopg.Connection) -> int:
        """[postgres] connection_limit, or by default an equal share of max_connections between
        the fleet's roles, after the superuser reserve and DAEMON_RESERVE for the daemon."""
        if self.settings.postgres.connection_limit:
            return self.settings.postgres.connection_limit
        row = conn.execute("SELECT current_setting('max_connections')::int, "
                           "current_setting('superuser_reserved_connections')::int").fetchone()
        total, reserved = (row[0], row[1]) if row else (100, 3)
        share = (total - reserved - DAEMON_RESERVE) // max(1, self.role_count)
        return max(MIN_CONNECTION_LIMIT, share)

    def _ensure_role(self, conn: psycopg.Connection, s: ServiceSecrets, superuser: bool) -> None:
        name = sql.Identifier(s.role)
        # Every pass: a tenant may have changed its own settings (PostgreSQL allows any role to),
        # and the share shrinks as tenants are added. CONNECTION LIMIT it cannot change itself.
        limit = self.connection_limit(conn)
        exists = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (s.role,)).fetchone()
        if exists:
            if exists[0] != limit:
                conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(name, sql.Literal(limit)))
            conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(name))
        if exists and superuser:
            row = conn.execute("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s",
                               (s.role,)).fetchone()
            if row and row[0] and _scram_matches(row[1], s.password):
                return  # already right: change nothing
        # Only the verifier reaches the server (and so its logs), never the password.
        verifier = conn.pgconn.encrypt_password(s.password.encode(), s.role.encode(), b"scram-sha-256")
        password = sql.Literal(verifier.decode())
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {} PASSWORD {}").format(
                    name, sql.Literal(limit), password))
                return
            except pgerrors.DuplicateObject:
                pass  # created meanwhile by another provisioner: fall through to ALTER
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(name, password))

    def _tenant_conninfo(self, s: ServiceSecrets) -> dict[str, Any]:
        return self.servers.role_conninfo(s.role, s.password, s.database)

    def _pg_applied(self, s: ServiceSecrets) -> list[migrations.Applied]:
        with self._pg_errors(f"read the schema of {s.database}"), \
                psycopg.connect(**self._tenant_conninfo(s), connect_timeout=10, autocommit=True) as conn:
            return migrations.applied(conn)

    def _pg_migrate(self, s: ServiceSecrets, plan: list[migrations.Migration],
                    atomic: bool = False) -> list[int]:
        if not plan:
            return []
        # As the tenant role, so every object it creates is owned by it.
        with self._pg_errors(f"migrate {s.database}"), \
                psycopg.connect(**self._tenant_conninfo(s), connect_timeout=10) as conn:
            try:
                return migrations.apply(conn, plan, atomic=atomic)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    raise
                raise FailedPrecondition(
                    f"migration of {s.database} failed: {exc.diag.message_primary or exc}") from None

    def _pg_purge(self, name: str) -> list[str]:
        ident = sql.Identifier(name)
        lines: list[str] = []
        with self._pg_errors(f"remove {name}"), self._admin() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                if conn.info.server_version >= 130000:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
                else:
                    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
                lines.append(f"dropped database {name}")
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE usename = %s AND pid <> pg_backend_pid()", (name,))
                try:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
                except pgerrors.DependentObjectsStillExist:
                    # Objects or grants it holds in the admin database (an external server
                    # without the sameuser rule lets roles in): drop those, then the role.
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
                lines.append(f"dropped role {name}")
        return lines

    # ---- Redis

    @contextlib.contextmanager
    def _redis_admin(self, doing: str, db: int = 0) -> Iterator[redis.Redis]:
        addr = self.servers.redis.address
        try:
            with self.servers.redis.client(single_connection=bool(db)) as client:
                if db:
                    client.execute_command("SELECT", db)
                yield client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable(f"Redis at {addr} is unreachable: {_redis_reason(exc)}; will retry") from None
        except redis.RedisError as exc:
            raise FailedPrecondition(f"Redis at {addr} refused {doing}: {exc}") from None

    def _acl_rules(self, client: redis.Redis, s: ServiceSecrets) -> list[str]:
        if self._redis_major is None:
            version = str(client.info("server").get("redis_version", "0"))
            self._redis_major = int(version.split(".")[0] or 0)
        digest = hashlib.sha256(s.redis_password.encode()).hexdigest()
        pattern = key_glob(s.key_prefix)
        # 'reset' alone keeps all channels on 6.2 (acl-pubsub-default): resetchannels explicitly.
        rules = ["reset", "resetchannels", "on", f"#{digest}", f"~{pattern}", f"&{pattern}", "+@all",
                 *_ACL_DENY]
        if self._redis_major >= 7:
            rules += _ACL_DENY_7
        return rules

    @staticmethod
    def _acl_save(client: redis.Redis) -> None:
        try:
            client.execute_command("ACL", "SAVE")
        except redis.ResponseError as exc:
            # An external server without an aclfile keeps users in memory only; provisioning at
            # every daemon start (re)creates them after a Redis restart.
            if "acl file" not in str(exc).lower():
                raise

    def _redis_setup(self, s: ServiceSecrets) -> None:
        # Only the SHA-256 of the password is sent (ACL SETUSER #<hash>), never the password.
        with self._redis_admin(f"to set up ACL user {s.redis_username}") as client:
            client.execute_command("ACL", "SETUSER", s.redis_username, *self._acl_rules(client, s))
            self._acl_save(client)

    def _redis_purge(self, username: str, prefix: str) -> list[str]:
        lines: list[str] = []
        with self._redis_admin(f"to remove {username}") as client:
            # Delete the user first: Redis drops its connections, so nothing writes while we scan.
            if client.execute_command("ACL", "DELUSER", username):
                self._acl_save(client)
                lines.append(f"deleted Redis ACL user {username}")
            pattern = key_glob(prefix)
            # Every logical database that holds keys: an older daemon let tenants SELECT others.
            databases = sorted(int(name[2:]) for name in client.info("keyspace") if name[2:].isdigit())
        for db in databases or [0]:
            with self._redis_admin(f"to remove {username}'s keys", db=db) as client:
                deleted, batch = 0, []
                for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        deleted += int(client.unlink(*batch))
                        batch.clear()
                if batch:
                    deleted += int(client.unlink(*batch))
            if deleted:
                where = f" in database {db}" if db else ""
                lines.append(f"deleted {deleted} Redis keys {prefix}*{where}")
        return lines
