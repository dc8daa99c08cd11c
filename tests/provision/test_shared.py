"""The tenant's shared database: its two services' roles may read and add opt-outs, nothing more;
another tenant's roles cannot even connect."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from oraclewad.provision.provisioner import Provisioner
from tests.provision.conftest import Backend


async def test_both_roles_share_the_suppression_list_and_nothing_else(
        backend: Backend, prov: Provisioner, tenant_ids: Callable[[], str],
        migration_dirs: dict[str, Path]) -> None:
    tid, other = tenant_ids(), tenant_ids()
    await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    await prov.provision(other, ["recovery"], migration_dirs)
    rec = prov.child_config_fragment(tid, "recovery")["shared"]["dsn"]
    bro = prov.child_config_fragment(tid, "broadcast")["shared"]["dsn"]
    with psycopg.connect(rec, autocommit=True) as conn:
        conn.execute("INSERT INTO suppressions (phone, service, instance, word) "
                     "VALUES ('5511987654321', 'recovery', 'i1', 'SAIR')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM suppressions")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE mine (x int)")
    with psycopg.connect(bro, autocommit=True) as conn:
        assert conn.execute("SELECT phone, service FROM suppressions").fetchall() == [
            ("5511987654321", "recovery")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE suppressions SET word = 'x'")
    # The other tenant's role, pointed at this tenant's shared database, is refused at the door.
    foreign = psycopg.conninfo.make_conninfo(prov.child_config_fragment(other, "recovery")["shared"]["dsn"],
                                             dbname=psycopg.conninfo.conninfo_to_dict(rec)["dbname"])
    with pytest.raises(psycopg.OperationalError, match=r"permission denied|not permitted"):
        psycopg.connect(foreign).close()
    lines = await prov.purge(tid)
    assert any("_shared" in line for line in lines)


async def test_both_roles_share_the_not_on_whatsapp_list_and_cannot_undo_it(
        backend: Backend, prov: Provisioner, tenant_ids: Callable[[], str],
        migration_dirs: dict[str, Path]) -> None:
    tid = tenant_ids()
    await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    rec = prov.child_config_fragment(tid, "recovery")["shared"]["dsn"]
    bro = prov.child_config_fragment(tid, "broadcast")["shared"]["dsn"]
    with psycopg.connect(rec, autocommit=True) as conn:
        conn.execute("INSERT INTO not_on_whatsapp (phone, service, instance) "
                     "VALUES ('5511987654321', 'recovery', 'i1')")
    with psycopg.connect(bro, autocommit=True) as conn:
        assert conn.execute("SELECT phone, service FROM not_on_whatsapp").fetchall() == [
            ("5511987654321", "recovery")]
        for statement in ("DELETE FROM not_on_whatsapp", "UPDATE not_on_whatsapp SET service = 'x'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    await prov.purge(tid)
