"""Is a production server open to a tenant that went rogue? Warnings, each naming the fix.

Checked at daemon start and by `oraclewad check`, for external servers only (the embedded ones
are configured by the daemon itself): password-less logins (pg_hba `trust`), databases every
role may connect to, Redis' `default` user with every command and no password, and unencrypted
connections to a server that is not on this machine.
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from oraclewad.provision.servers import RedisParams, postgres_address
from oraclewad.settings import Settings

log = logging.getLogger("oraclewad.provision")
_TIMEOUT = 3
_PROBE_ROLE = "oraclewad_probe"


def _is_local(host: str) -> bool:
    """A unix socket, localhost or a loopback address (by what the config says, not by DNS)."""
    if not host or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_warnings(settings: Settings) -> list[str]:
    """Unencrypted connections to servers elsewhere (from the config alone: no I/O)."""
    warnings = []
    if settings.postgres.dsn:
        try:
            params = psycopg.conninfo.conninfo_to_dict(settings.postgres.dsn)
        except psycopg.ProgrammingError:
            params = {}
        hosts = str(params.get("hostaddr") or params.get("host") or "localhost").split(",")
        remote = [h for h in hosts if not _is_local(h)]
        if remote and params.get("sslmode") not in ("require", "verify-ca", "verify-full"):
            warnings.append(
                f"PostgreSQL at {postgres_address(settings.postgres.dsn)} is reached without TLS "
                "(tenant passwords and data cross the network in the clear): add "
                "sslmode=verify-full and sslrootcert=<CA file> to [postgres] dsn")
    if settings.redis.url:
        parts = urlsplit(settings.redis.url)
        if parts.scheme == "redis" and not _is_local(parts.hostname or ""):
            warnings.append(
                f"Redis at {parts.hostname}:{parts.port or 6379} is reached without TLS: use a "
                "rediss:// URL in [redis] url (and ca_file)")
    return warnings


def postgres_warnings(dsn: str) -> list[str]:
    """Blocking: what the server lets a tenant role do that it should not."""
    where = postgres_address(dsn)
    warnings = []
    # A role that does not exist, without a password: "does not exist" means authentication was
    # skipped (trust); a password demand or a missing pg_hba line means the door is shut.
    probe = psycopg.conninfo.make_conninfo(dsn, user=_PROBE_ROLE, dbname=_PROBE_ROLE, password="")
    try:
        psycopg.connect(probe, connect_timeout=_TIMEOUT).close()
        trusted = True
    except psycopg.OperationalError as exc:
        text = str(exc)
        trusted = "does not exist" in text and "password" not in text
    if trusted:
        warnings.append(
            f"PostgreSQL at {where} lets roles log in without a password (pg_hba.conf `trust`): any "
            "process on a trusted host can log in as any tenant's role; use scram-sha-256 on every "
            "pg_hba.conf line that admits tenant roles, then SELECT pg_reload_conf()")
    try:
        with psycopg.connect(dsn, connect_timeout=_TIMEOUT, autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND "
                                "datname IN ('postgres', 'template1') AND "
                                "has_database_privilege('public', datname, 'CONNECT') "
                                "ORDER BY datname").fetchall()
    except psycopg.Error:
        rows = []       # unreachable: provisioning reports that
    if rows:
        names = ", ".join(r[0] for r in rows)
        warnings.append(
            f"PostgreSQL at {where} lets every role connect to {names} (PUBLIC has CONNECT): tenant "
            f"roles can log in there; run REVOKE CONNECT ON DATABASE {names} FROM PUBLIC "
            "(the embedded server does this itself)")
    return warnings


def redis_warnings(params: RedisParams) -> list[str]:
    """Blocking: the `default` user enabled with every command and no password."""
    try:
        with redis.Redis.from_url(params.url, username=params.username, password=params.password,
                                  socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT,
                                  retry=Retry(NoBackoff(), 0), **params.tls_kwargs()) as client:
            user = client.acl_getuser("default")
    except redis.RedisError:
        return []       # unreachable, or not allowed to ask: nothing to say
    if not user:
        return []
    flags = set(user.get("flags") or [])
    # redis-py splits "+@all" into `categories` (newer) or leaves it in `commands` (older).
    granted = {*(user.get("categories") or []), *str(user.get("commands") or "").split()}
    if "on" in flags and "nopass" in flags and "+@all" in granted:
        return [f"Redis at {params.address} lets anyone in as the `default` user with every command "
                "and no password: any process that reaches it can read and delete every tenant's "
                "keys; run ACL SETUSER default off (give the daemon its own ACL user with a "
                "password in [redis] url), and ACL SAVE or CONFIG REWRITE"]
    return []


def open_server_warnings(settings: Settings, postgres_dsn: str | None, redis: RedisParams | None,
                         ) -> list[str]:
    """Blocking: every warning for the external servers (None: embedded, nothing to check)."""
    warnings = transport_warnings(settings)
    if postgres_dsn is not None:
        warnings += postgres_warnings(postgres_dsn)
    if redis is not None:
        warnings += redis_warnings(redis)
    return warnings
