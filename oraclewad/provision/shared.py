"""The tenant's shared database `<tenant>_shared`: what both of a tenant's services may reach.

Two tables: `suppressions` (the opt-out list) and `not_on_whatsapp` (numbers Evolution answered
`exists: false`, never tried again by either service: each lookup is a ban risk). The database
and the tables belong to the provisioning admin, not to a tenant role; each service role of the
tenant gets CONNECT on the database and SELECT + INSERT on the tables, and nothing else (no UPDATE
or DELETE: a service never undoes an opt-out or a verdict). Other tenants' roles cannot even
connect (CONNECT revoked from PUBLIC).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from oraclewad.provision.names import resource_name

SHARED = "shared"
_TABLE = """
CREATE TABLE IF NOT EXISTS suppressions (
    phone    text        PRIMARY KEY,      -- E.164 digits without '+', as the services normalise them
    service  text        NOT NULL,         -- the service whose instance received the opt-out
    instance text        NOT NULL,
    word     text        NOT NULL,         -- SAIR, PARAR, STOP, CANCELAR, DESCADASTRAR
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS not_on_whatsapp (
    phone    text        PRIMARY KEY,      -- E.164 digits without '+'
    service  text        NOT NULL,         -- the service whose send got exists: false
    instance text        NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT now()
)
"""
TABLES = ("suppressions", "not_on_whatsapp")

Admin = Callable[..., psycopg.Connection]  # admin(dbname=None) -> autocommit connection


def database(tenant_id: str) -> str:
    return resource_name(tenant_id, SHARED)


def create(admin: Admin, tenant_id: str) -> None:
    """The shared database, if it is missing (it needs no role: provisioning creates it while
    the service roles are made)."""
    _create(admin, database(tenant_id))


def _create(admin: Admin, name: str, conn: psycopg.Connection | None = None) -> None:
    with contextlib.nullcontext(conn) if conn is not None else admin() as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            with contextlib.suppress(pgerrors.DuplicateDatabase):  # another provisioner won the race
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup(admin: Admin, tenant_id: str, roles: Sequence[str]) -> None:
    """Create (or complete) the shared database and grant it to the tenant's service roles."""
    name = database(tenant_id)
    ident = sql.Identifier(name)
    with admin() as conn:
        _create(admin, name, conn)
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident))
        for role in roles:
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident, sql.Identifier(role)))
    with admin(name) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(_TABLE)
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(tables))
        for role in roles:
            r = sql.Identifier(role)
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(r))
            conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(tables, r))


def purge(admin: Admin, tenant_id: str) -> list[str]:
    name = database(tenant_id)
    with admin() as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            return []
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return [f"dropped database {name}"]


def revoke(admin: Admin, tenant_id: str, role: str) -> None:
    """Take one role's grants away (its service is purged, the tenant's other service stays)."""
    name = database(tenant_id)
    r = sql.Identifier(role)
    with admin() as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            return
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            return
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(name), r))
    with admin(name) as conn:
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(r))
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(r))
