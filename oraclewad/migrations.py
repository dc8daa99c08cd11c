"""Versioned SQL migrations: `NNNN_name.sql` files applied in order, recorded in `schema_migrations`.

A leaf module (stdlib + psycopg only): the daemon applies migrations at provisioning time and
each child service calls `check()` at start, so both sides import it.

Rules for migration files: plain SQL, no BEGIN/COMMIT (each file runs inside one transaction
together with its bookkeeping row) and nothing that cannot run in a transaction
(CREATE INDEX CONCURRENTLY, ALTER TYPE ... ADD VALUE on PG < 12).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import pq

__all__ = ["Migration", "SchemaMismatch", "applied_versions", "apply", "check", "current_version", "discover"]

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)\.sql$")

# Advisory lock key (any constant bigint; advisory locks are scoped to the current database,
# so appliers of different databases never wait on each other). 0x6f7761 = "owa".
_LOCK_KEY = 0x6F7761_5343484D

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str = field(repr=False)


class SchemaMismatch(Exception):
    """The database's schema version is not the one this release was built for."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def discover(directory: Path) -> list[Migration]:
    """Every `NNNN_name.sql` file in `directory`, sorted by version.

    Any other `*.sql` file, a version 0000, or two files with the same version raise
    ValueError naming the file(s); non-SQL files (README, __init__.py) are ignored.
    """
    directory = Path(directory)
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql" or not path.is_file():
            continue
        m = _FILE.match(path.name)
        if m is None:
            raise ValueError(f"{path}: migration files must be named NNNN_name.sql (e.g. 0001_init.sql)")
        version = int(m["version"])
        if version == 0:
            raise ValueError(f"{path}: migration versions start at 0001 (0 means 'no schema')")
        if version in found:
            raise ValueError(f"{path}: duplicate migration version {version:04d} "
                             f"(also {found[version].path.name})")
        found[version] = Migration(version=version, name=m["name"], path=path,
                                   sql=path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def _table_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """Versions recorded in schema_migrations (empty when the table does not exist)."""
    # conn.transaction() works in autocommit and non-autocommit mode alike and leaves the
    # connection in the state it found it.
    with conn.transaction():
        if not _table_exists(conn):
            return set()
        return {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}


def current_version(conn: psycopg.Connection) -> int:
    """Highest applied version; 0 when there is no schema_migrations table."""
    with conn.transaction():
        if not _table_exists(conn):
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0


def apply(conn: psycopg.Connection, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not yet recorded, in version order; returns the versions applied.

    Each file runs in its own transaction together with its schema_migrations row, under a
    transaction-scoped advisory lock: a second applier waits, then sees the row and skips.
    A failing file raises (psycopg.Error) with that file's transaction rolled back and the
    earlier files kept.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        # Inside an open transaction, conn.transaction() would only make savepoints and
        # nothing would be committed per file.
        raise ValueError("migrations.apply() needs a connection that is not inside a transaction")
    done: list[int] = []
    for m in sorted(migrations, key=lambda m: m.version):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_CREATE_TABLE)
            already = conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s",
                                   (m.version,)).fetchone()
            if already:
                continue
            # No parameters: psycopg sends the text as is, so a file may hold many statements
            # and literal % signs.
            conn.execute(m.sql)  # type: ignore[arg-type]
            conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, now())",
                         (m.version, m.name))
        done.append(m.version)
    return done


def check(conn: psycopg.Connection, migrations: Sequence[Migration]) -> None:
    """Raise SchemaMismatch unless the database holds exactly this release's migrations (or newer ones
    it recorded but this release does not know, which is reported as 'newer')."""
    db = conn.info.dbname
    wanted = max((m.version for m in migrations), default=0)
    applied = applied_versions(conn)
    current = max(applied, default=0)
    if current > wanted:
        raise SchemaMismatch(
            f"database {db} is at schema version {current}, newer than this release understands "
            f"({wanted}): deploy a newer release or roll back the database")
    missing = [m.version for m in migrations if m.version not in applied]
    if missing:
        gap = "" if current < wanted else f" (missing {', '.join(str(v) for v in missing)})"
        raise SchemaMismatch(
            f"database {db} is at schema version {current}{gap}, this release needs {wanted}: "
            "run `oraclectl reload` or re-provision to apply migrations")
