from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from oraclewad import migrations
from oraclewad.migrations import SchemaMismatch
from tests.provision.conftest import Backend
from tests.support.system import in_threads


def write(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


THREE = {
    "0001_init.sql": "CREATE TABLE a (x int);\nINSERT INTO a VALUES (1); -- 100% literal\n",
    "0002_b.sql": "CREATE TABLE b (y text DEFAULT '50%');\n",
    "0003_c.sql": "ALTER TABLE a ADD COLUMN z int;\n",
}


@pytest.fixture
def scratch_db(backend: Backend) -> Iterator[str]:
    name = f"mig_{secrets.token_hex(4)}"
    with backend.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(backend.servers.postgres_dsn)
    params["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**params)
    finally:
        with backend.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_discover_sorts_and_ignores_other_files(tmp_path: Path) -> None:
    d = write(tmp_path / "m", {**THREE, "README.md": "x", "__init__.py": ""})
    found = migrations.discover(d)
    assert [(m.version, m.name) for m in found] == [(1, "init"), (2, "b"), (3, "c")]
    assert found[0].sql == THREE["0001_init.sql"]
    assert "CREATE TABLE" not in repr(found[0])  # repr stays short


@pytest.mark.parametrize("bad", ["1_init.sql", "0001-init.sql", "0001_.sql", "abcd_x.sql", "0000_zero.sql",
                                 "00001_five.sql", "0001_a b.sql"])
def test_discover_rejects_malformed_names(tmp_path: Path, bad: str) -> None:
    d = write(tmp_path / "m", {"0002_ok.sql": "", bad: ""})
    with pytest.raises(ValueError, match=bad.replace(" ", ".")):
        migrations.discover(d)


def test_discover_rejects_duplicate_versions(tmp_path: Path) -> None:
    d = write(tmp_path / "m", {"0001_a.sql": "", "0001_b.sql": ""})
    with pytest.raises(ValueError, match=r"0001_b\.sql.*duplicate.*0001_a\.sql"):
        migrations.discover(d)


def test_apply_in_order_and_idempotent(tmp_path: Path, scratch_db: str) -> None:
    ms = migrations.discover(write(tmp_path / "m", THREE))
    with psycopg.connect(scratch_db) as conn:
        assert migrations.current_version(conn) == 0
        assert migrations.apply(conn, list(reversed(ms))) == [1, 2, 3]
        assert migrations.apply(conn, ms) == []
        assert migrations.current_version(conn) == 3
        migrations.check(conn, ms)
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert rows == [(1, "init"), (2, "b"), (3, "c")]
        assert conn.execute("SELECT x, z FROM a").fetchall() == [(1, None)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # our SELECTs


def test_check_older_and_newer(tmp_path: Path, scratch_db: str) -> None:
    ms = migrations.discover(write(tmp_path / "m", THREE))
    dbname = psycopg.conninfo.conninfo_to_dict(scratch_db)["dbname"]
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        with pytest.raises(SchemaMismatch) as no_schema:
            migrations.check(conn, ms)
        assert "at schema version 0, this release needs 3" in str(no_schema.value)
        for applied, message in (
                (ms[:1], f"database {dbname} is at schema version 1, this release needs 2: run "
                         "`oraclectl reload` or re-provision to apply migrations"),
                (ms, f"database {dbname} is at schema version 3, newer than this release understands (2) "
                     "and not declared backward compatible (0003_c): deploy a newer release")):
            migrations.apply(conn, applied)
            with pytest.raises(SchemaMismatch) as mismatch:
                migrations.check(conn, ms[:2])     # a release that knows 0001 and 0002
            assert str(mismatch.value) == message
        migrations.check(conn, ms)


def test_a_release_runs_on_newer_migrations_only_when_they_are_declared_compatible(
        tmp_path: Path, scratch_db: str) -> None:
    files = {**THREE, "0002_b.sql": "-- adds a table: older releases never look at it\n"
                                    "-- backward-compatible: yes\n" + THREE["0002_b.sql"]}
    ms = migrations.discover(write(tmp_path / "m", files))
    assert [m.backward_compatible for m in ms] == [False, True, False]
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        migrations.apply(conn, ms[:2])
        migrations.check(conn, ms[:1])      # 0002 is declared compatible: the 0001 release may run
        flags = [(a.version, a.backward_compatible) for a in migrations.applied(conn)]
        assert flags == [(1, False), (2, True)]
        migrations.apply(conn, ms)
        with pytest.raises(SchemaMismatch, match=r"not declared backward compatible \(0003_c\)"):
            migrations.check(conn, ms[:1])


def test_a_table_from_before_the_flag_reads_as_not_compatible(scratch_db: str) -> None:
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        assert migrations.applied(conn) == [] and migrations.current_version(conn) == 0
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, 'init')")
        assert migrations.applied(conn) == [migrations.Applied(1, "init", False)]
        conn.execute("ALTER TABLE schema_migrations "
                     "ADD COLUMN backward_compatible boolean NOT NULL DEFAULT true")
        assert migrations.applied(conn) == [migrations.Applied(1, "init", True)]
        conn.execute("ALTER TABLE schema_migrations DROP COLUMN backward_compatible")   # attisdropped
        assert migrations.applied(conn) == [migrations.Applied(1, "init", False)]


def test_reading_the_schema_inside_a_transaction_leaves_it_usable(scratch_db: str) -> None:
    # Without autocommit (a pool's connection, a provisioning transaction), a missing table must
    # not abort the caller's transaction: only the one-statement read of autocommit may fail.
    with psycopg.connect(scratch_db) as conn:
        conn.execute("SELECT 1")
        assert migrations.applied(conn) == []
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_atomic_apply_leaves_the_database_untouched_on_failure(tmp_path: Path, scratch_db: str) -> None:
    ms = migrations.discover(write(tmp_path / "m", {**THREE, "0003_c.sql": "ALTER TABLE nope ADD x int;\n"}))
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        migrations.apply(conn, ms[:1])
        with pytest.raises(psycopg.Error):
            migrations.apply(conn, ms, atomic=True)
        assert migrations.current_version(conn) == 1
        assert conn.execute("SELECT to_regclass('b')").fetchone() == (None,)


def test_failed_migration_keeps_earlier_ones(tmp_path: Path, scratch_db: str) -> None:
    ms = migrations.discover(write(tmp_path / "m", {
        "0001_ok.sql": "CREATE TABLE ok (x int);",
        "0002_bad.sql": "CREATE TABLE half (x int);\nSELECT 1/0;",
        "0003_later.sql": "CREATE TABLE later (x int);",
    }))
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrations.apply(conn, ms)
        assert migrations.current_version(conn) == 1
        assert conn.execute("SELECT to_regclass('half'), to_regclass('later')").fetchone() == (None, None)


def test_apply_refuses_open_transaction(tmp_path: Path, scratch_db: str) -> None:
    ms = migrations.discover(write(tmp_path / "m", THREE))
    with psycopg.connect(scratch_db) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="transaction"):
            migrations.apply(conn, ms)


def test_concurrent_appliers_apply_once(tmp_path: Path, scratch_db: str) -> None:
    ms = migrations.discover(write(tmp_path / "m", {
        "0001_slow.sql": "SELECT pg_sleep(0.3); CREATE TABLE once (x int);",
        "0002_next.sql": "INSERT INTO once VALUES (1);",
    }))
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(scratch_db) as conn:
                results.append(migrations.apply(conn, ms))
        except BaseException as exc:
            errors.append(exc)

    in_threads(run, 3)
    assert not errors
    assert sorted(v for r in results for v in r) == [1, 2]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM once").fetchone() == (1,)
