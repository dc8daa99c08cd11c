"""Versioned SQL migrations: `NNNN_name.sql` files applied in order, recorded in `schema_migrations`.

A leaf module (stdlib + psycopg only): the daemon applies migrations at provisioning time and
each child service calls `check()` at start, so both sides import it.

Rules for migration files: plain SQL, no BEGIN/COMMIT (each file runs inside one transaction
together with its bookkeeping row) and nothing that cannot run in a transaction
(CREATE INDEX CONCURRENTLY, ALTER TYPE ... ADD VALUE on PG < 12).

Migrations are forward-only. A file whose leading comments hold the line
`-- backward-compatible: yes` declares that releases built before it can still run on the schema
it leaves (it only adds: a table, a nullable column, an index). The flag is recorded with the
version, so an older release (which does not have the file) can tell whether it may run, and a
rollback past undeclared migrations is refused.

SQL that two services' schemas share is written once, in `oraclewad/services/sql/`, and a
migration names it on a line of its own with psql's include-relative command, `\\ir ../../sql/x.sql`.
`discover()` puts the file's text in place of that line, so a migration's SQL (and any digest of it)
is the same as when it was written out in full; a runner that does not know the line sends it to
PostgreSQL, which refuses it, rather than skipping the shared part.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import pq

__all__ = ["Applied", "Migration", "SchemaMismatch", "applied", "applied_versions", "apply", "check",
           "current_version", "discover"]

_COMPATIBLE = re.compile(r"^--\s*backward[-_ ]compatible\s*:\s*(yes|true)\s*$", re.IGNORECASE)
_INCLUDE = re.compile(r"^\\ir\s+(?P<path>\S+)\s*$")
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
_ADD_FLAG = ("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS "
             "backward_compatible boolean NOT NULL DEFAULT false")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str = field(repr=False)
    backward_compatible: bool = False


@dataclass(frozen=True)
class Applied:
    """A row of schema_migrations."""

    version: int
    name: str
    backward_compatible: bool


def _declares_compatible(sql: str) -> bool:
    for line in sql.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("--"):
            return False        # only the leading comment block declares
        if _COMPATIBLE.match(line):
            return True
    return False


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
        text = _expand(path, path.read_text(encoding="utf-8"))
        found[version] = Migration(version=version, name=m["name"], path=path, sql=text,
                                   backward_compatible=_declares_compatible(text))
    return [found[v] for v in sorted(found)]


def _expand(path: Path, text: str, depth: int = 0) -> str:
    """`text` with each `\\ir FILE` line replaced by FILE's text (relative to `path`'s folder)."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        m = _INCLUDE.match(line.strip())
        if m is None:
            out.append(line)
            continue
        target = path.parent / m["path"]
        if depth >= 4:
            raise ValueError(f"{path}: \\ir {m['path']}: includes nest more than 4 deep")
        try:
            included = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{path}: \\ir {m['path']}: cannot read {target} ({exc.strerror}): "
                             "the path is relative to the migration's folder") from None
        out.append(_expand(target, included, depth + 1))
    return "".join(out)


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


# Whether the table exists and has the flag column, in one query on the catalog itself: the same
# through information_schema.columns took 12 ms in a fresh backend (its view plans cold), and every
# service start and health probe asks.
_SHAPE = ("SELECT to_regclass('schema_migrations') IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute "
          "WHERE attrelid = to_regclass('schema_migrations') AND attname = 'backward_compatible' "
          "AND NOT attisdropped)")


_APPLIED = "SELECT version, name, backward_compatible FROM schema_migrations ORDER BY version"


def applied(conn: psycopg.Connection) -> list[Applied]:
    """Every recorded migration, by version (a table from before the flag reads as not compatible)."""
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        # One round trip where a failed statement costs nothing (every service start asks): the
        # table as it is now; a missing table or flag column is then looked at in the catalog.
        try:
            rows = conn.execute(_APPLIED).fetchall()
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            pass
        else:
            return [Applied(int(v), str(n), bool(c)) for v, n, c in rows]
    with conn.transaction():
        row = conn.execute(_SHAPE).fetchone()
        if not (row and row[0]):
            return []
        flag = "backward_compatible" if row[1] else "false"
        query = f"SELECT version, name, {flag} FROM schema_migrations ORDER BY version"
        rows = conn.execute(query).fetchall()
        return [Applied(int(v), str(n), bool(c)) for v, n, c in rows]


def current_version(conn: psycopg.Connection) -> int:
    """Highest applied version; 0 when there is no schema_migrations table."""
    with conn.transaction():
        if not _table_exists(conn):
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0


def apply(conn: psycopg.Connection, migrations: Sequence[Migration], *, atomic: bool = False) -> list[int]:
    """Apply the migrations not yet recorded, in version order; returns the versions applied.

    Each file runs in its own transaction together with its schema_migrations row, under a
    transaction-scoped advisory lock: a second applier waits, then sees the row and skips.
    A failing file raises (psycopg.Error) with that file's transaction rolled back and the
    earlier files kept. atomic=True runs them all in one transaction instead: a failure leaves
    the database as it was (what a release swap needs to fall back on the old release).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        # Inside an open transaction, conn.transaction() would only make savepoints and
        # nothing would be committed per file.
        raise ValueError("migrations.apply() needs a connection that is not inside a transaction")
    done: list[int] = []
    ordered = sorted(migrations, key=lambda m: m.version)
    if atomic:
        with conn.transaction():
            for m in ordered:
                if _apply_one(conn, m):
                    done.append(m.version)
        return done
    for m in ordered:
        with conn.transaction():
            if _apply_one(conn, m):
                done.append(m.version)
    return done


def _apply_one(conn: psycopg.Connection, m: Migration) -> bool:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    conn.execute(_CREATE_TABLE)
    conn.execute(_ADD_FLAG)
    already = conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (m.version,)).fetchone()
    if already:
        return False
    # No parameters: psycopg sends the text as is, so a file may hold many statements
    # and literal % signs.
    conn.execute(m.sql)  # type: ignore[arg-type]
    conn.execute("INSERT INTO schema_migrations (version, name, applied_at, backward_compatible) "
                 "VALUES (%s, %s, now(), %s)", (m.version, m.name, m.backward_compatible))
    return True


def check(conn: psycopg.Connection, migrations: Sequence[Migration]) -> None:
    """Raise SchemaMismatch unless the database holds this release's migrations and, beyond them,
    only newer ones declared backward compatible."""
    db = conn.info.dbname
    wanted = max((m.version for m in migrations), default=0)
    rows = applied(conn)
    done = {r.version for r in rows}
    current = max(done, default=0)
    newer = [r for r in rows if r.version > wanted]
    if any(not r.backward_compatible for r in newer):
        raise SchemaMismatch(
            f"database {db} is at schema version {current}, newer than this release understands "
            f"({wanted}) and not declared backward compatible "
            f"({', '.join(f'{r.version:04d}_{r.name}' for r in newer if not r.backward_compatible)}): "
            "deploy a newer release")
    missing = [m.version for m in migrations if m.version not in done]
    if missing:
        gap = "" if current < wanted else f" (missing {', '.join(str(v) for v in missing)})"
        raise SchemaMismatch(
            f"database {db} is at schema version {current}{gap}, this release needs {wanted}: "
            "run `oraclectl reload` or re-provision to apply migrations")
