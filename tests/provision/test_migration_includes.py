"""Shared SQL (services/sql/) reaches each service's migrations through `\\ir` lines. A migration
that deployed databases have applied must keep its exact text once the includes are expanded:
a new release that changed it would leave those databases with a schema it does not describe."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
import pytest

from oraclewad import migrations
from tests.provision.test_migrations import scratch_db  # noqa: F401  (the fixture)

SERVICES = Path(__file__).resolve().parents[2] / "oraclewad" / "services"

# sha256 of each migration's SQL as first released (before any of it moved to services/sql/).
APPLIED = {
    ("recovery", 1): "503ce74395b25326d421959ef872d48ea39e4d211ee571c17b2eb98e73b56777",
    ("recovery", 2): "95029782ec5ae3ff2e57e0dbbc34e98faf7ac2b5b6bd88f9f4c1b17fe1a3b98f",
    ("recovery", 3): "2181d30b71232fa102f1967e2401478de245f31ebc738a4a727ac026872ccc0f",
    ("recovery", 4): "8ca5f5ece52c313223cb6326a3ff68eed36daf8ed120283c98d116cb8191934d",
    ("broadcast", 1): "bd4357cfa7ca0e3c627af39f5ddd83f975ed98074e28d73513e033ff9a6a8035",
    ("broadcast", 2): "2181d30b71232fa102f1967e2401478de245f31ebc738a4a727ac026872ccc0f",
    ("broadcast", 3): "73cad4544ecdc4cc282d3c8bb66a244457414f0785aa747795d90f16d0d33d6a",
}


def test_released_migrations_expand_to_the_text_they_were_applied_with():
    found = {(s, m.version): m for s in ("recovery", "broadcast")
             for m in migrations.discover(SERVICES / s / "migrations")}
    for key, digest in APPLIED.items():
        assert hashlib.sha256(found[key].sql.encode()).hexdigest() == digest, key
        assert "\\ir " not in found[key].sql, key
    assert found[("recovery", 3)].backward_compatible and found[("broadcast", 2)].backward_compatible


def test_an_include_that_cannot_be_read_names_the_migration_and_the_path(tmp_path):
    (tmp_path / "0001_init.sql").write_text("CREATE TABLE a (x int);\n\\ir ../nowhere.sql\n")
    with pytest.raises(ValueError, match=r"0001_init\.sql: \\ir \.\./nowhere\.sql: cannot read"):
        migrations.discover(tmp_path)


def test_a_runner_without_includes_fails_instead_of_skipping_the_shared_sql(scratch_db):  # noqa: F811
    # What a daemon older than \ir support sends: PostgreSQL refuses it and nothing is recorded.
    stub = SERVICES / "broadcast" / "migrations" / "0002_antiban.sql"
    raw = migrations.Migration(2, "antiban", stub, stub.read_text())
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError):
            migrations.apply(conn, [raw])
        assert migrations.current_version(conn) == 0
