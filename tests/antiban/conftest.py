"""Anti-ban fixtures: one migrated scratch database per session (the machine's PostgreSQL, or an
embedded one with OWA_TEST_BACKEND=embedded), emptied before each test or hypothesis example."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.services.sending import drop_database, make_database

BROADCAST = Path(__file__).resolve().parents[2] / "oraclewad" / "services" / "broadcast" / "migrations"
TABLES = "antiban_instances, antiban_days, antiban_sends, antiban_invalid_numbers, antiban_manual"


@pytest.fixture(scope="session")
def antiban_dsn(pg_admin: str) -> Iterator[str]:
    dsn = make_database(pg_admin, BROADCAST)
    yield dsn
    drop_database(pg_admin, dsn)


@pytest.fixture
def conn(antiban_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(antiban_dsn, autocommit=True) as c:
        empty(c)
        yield c


def empty(c: psycopg.Connection) -> None:
    c.execute(f"TRUNCATE {TABLES}")
