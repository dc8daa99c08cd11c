from __future__ import annotations

import dataclasses
import logging
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis
import tomli_w
import trio

from oraclewad.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from oraclewad.provision.dataservers import ExternalRedis, RedisParams
from oraclewad.provision.provisioner import Provisioner
from oraclewad.provision.servers import Servers
from tests.provision.conftest import EMBEDDED_ONLY, Backend

BAD_IDS = ['a"; drop', "x$(rm)", "a b", "1abc", "a" * 41]


def frag_pg(prov: Provisioner, tid: str, svc: str) -> str:
    return prov.child_config_fragment(tid, svc)["postgres"]["dsn"]


def frag_redis(prov: Provisioner, tid: str, svc: str) -> redis.Redis:
    r = prov.child_config_fragment(tid, svc)["redis"]
    return redis.Redis.from_url(r["url"], username=r["username"], password=r["password"])


def read_secrets(prov: Provisioner, tid: str) -> dict:
    return tomllib.loads(prov.secrets_path(tid).read_text())


async def test_postgres_isolation(backend: Backend, prov: Provisioner, tenant_ids: Callable[[], str],
                                  migration_dirs: dict[str, Path]) -> None:
    a, b = tenant_ids(), tenant_ids()
    for tid in (a, b):
        await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)

    with psycopg.connect(frag_pg(prov, a, "recovery")) as conn:
        conn.execute("INSERT INTO orders (code) VALUES ('x')")
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").fetchone()
        assert owner == (prov.child_config_fragment(a, "recovery")["redis"]["username"],)

    a_rec = psycopg.conninfo.conninfo_to_dict(frag_pg(prov, a, "recovery"))
    b_rec = psycopg.conninfo.conninfo_to_dict(frag_pg(prov, b, "recovery"))
    # A's credentials, B's database.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**{**a_rec, "dbname": b_rec["dbname"]})
    # recovery's role cannot open broadcast's database.
    a_bro = psycopg.conninfo.conninfo_to_dict(frag_pg(prov, a, "broadcast"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**{**a_rec, "dbname": a_bro["dbname"]})
    # Nor the maintenance database.
    if backend.kind == "embedded":
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**{**a_rec, "dbname": "postgres"})
        # Passwords are enforced on the embedded server (the machine's server trusts loopback).
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**{**a_rec, "password": "wrong"})
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**{**a_rec, "user": b_rec["user"]})


async def test_redis_isolation(backend: Backend, prov: Provisioner, tenant_ids: Callable[[], str],
                               migration_dirs: dict[str, Path]) -> None:
    a, b = tenant_ids(), tenant_ids()
    for tid in (a, b):
        await prov.provision(tid, ["recovery"], {})
    ra, rb = frag_redis(prov, a, "recovery"), frag_redis(prov, b, "recovery")
    pa = prov.child_config_fragment(a, "recovery")["redis"]["prefix"]
    pb = prov.child_config_fragment(b, "recovery")["redis"]["prefix"]
    assert ra.set(pa + "k", "a") and rb.set(pb + "k", "b")
    assert ra.get(pa + "k") == b"a"
    assert ra.publish(pa + "events", "hi") == 0
    denied = [
        lambda: ra.get(pb + "k"),
        lambda: ra.set(pb + "k", "x"),
        lambda: ra.delete(pb + "k"),
        lambda: ra.set("unprefixed", "x"),
        lambda: ra.publish(pb + "events", "x"),
        lambda: ra.flushall(),
        lambda: ra.flushdb(),
        lambda: ra.config_get("*"),
        lambda: ra.keys("*"),
        lambda: ra.scan(),
        lambda: ra.randomkey(),
        lambda: ra.execute_command("ACL", "LIST"),
        lambda: ra.execute_command("PUBSUB", "CHANNELS"),
        # Confined to database 0, where the purge looks.
        lambda: ra.execute_command("SELECT", 7),
        lambda: ra.move(pa + "k", 7),
        lambda: ra.copy(pa + "k", pa + "k2", destination_db=7),
        lambda: ra.swapdb(0, 7),
    ]
    for call in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert rb.get(pb + "k") == b"b"
    # Another service of the same tenant is another user, with another prefix.
    await prov.provision(a, ["broadcast"], {})
    with pytest.raises(redis.exceptions.NoPermissionError):
        frag_redis(prov, a, "broadcast").get(pa + "k")


@pytest.mark.parametrize("tid", BAD_IDS)
async def test_bad_ids_rejected_before_any_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              backend: Backend, tid: str) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a server was contacted")

    monkeypatch.setattr(psycopg, "connect", boom)
    monkeypatch.setattr(redis.Redis, "from_url", boom)
    monkeypatch.setattr(redis, "Redis", boom)
    settings = dataclasses.replace(backend.settings, state_dir=tmp_path / "state")
    prov = Provisioner(settings, backend.servers)
    with pytest.raises(InvalidArgument):
        await prov.provision(tid, ["recovery"], {})
    with pytest.raises(InvalidArgument):
        await prov.provision("fine", ["recovery; DROP"], {})
    with pytest.raises(InvalidArgument):
        await prov.purge(tid)
    with pytest.raises(InvalidArgument):
        prov.child_config_fragment(tid, "recovery")
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.toml"))


async def test_provision_twice_changes_nothing(backend: Backend, prov: Provisioner,
                                               tenant_ids: Callable[[], str],
                                               migration_dirs: dict[str, Path]) -> None:
    tid = tenant_ids()
    assert await prov.provision(tid, ["recovery", "broadcast"], migration_dirs) == {
        "recovery": [1, 2], "broadcast": [1]}
    path = prov.secrets_path(tid)
    before_bytes, before_mtime = path.read_bytes(), path.stat().st_mtime_ns
    role = prov.child_config_fragment(tid, "recovery")["redis"]["username"]
    with backend.admin() as conn:
        verifier = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    with backend.redis_admin() as r:
        acl_before = r.acl_getuser(role)
    with psycopg.connect(frag_pg(prov, tid, "recovery")) as conn:
        conn.execute("INSERT INTO orders (code) VALUES ('survivor')")

    fresh = Provisioner(backend.settings, backend.servers)  # nothing cached: as after a daemon restart
    assert await fresh.provision(tid, ["recovery", "broadcast"], migration_dirs) == {
        "recovery": [], "broadcast": []}

    assert path.read_bytes() == before_bytes and path.stat().st_mtime_ns == before_mtime
    with backend.admin() as conn:
        assert conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                            (role,)).fetchone() == verifier
    with backend.redis_admin() as r:
        assert r.acl_getuser(role) == acl_before
    with psycopg.connect(frag_pg(fresh, tid, "recovery")) as conn:
        assert conn.execute("SELECT code, status FROM orders").fetchall() == [("survivor", "new")]


async def test_lost_password_is_reset_and_data_kept(backend: Backend, prov: Provisioner,
                                                    tenant_ids: Callable[[], str],
                                                    migration_dirs: dict[str, Path]) -> None:
    tid = tenant_ids()
    await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    old_dsn = frag_pg(prov, tid, "recovery")
    with psycopg.connect(old_dsn) as conn:
        conn.execute("INSERT INTO orders (code) VALUES ('kept')")
    doc = read_secrets(prov, tid)
    old_pw, old_redis_pw = doc["recovery"]["password"], doc["recovery"]["redis_password"]
    del doc["recovery"]["password"]
    del doc["recovery"]["redis_password"]
    prov.secrets_path(tid).write_bytes(tomli_w.dumps(doc).encode())

    fresh = Provisioner(backend.settings, backend.servers)
    await fresh.provision(tid, ["recovery", "broadcast"], migration_dirs)
    new = read_secrets(fresh, tid)
    assert new["recovery"]["password"] not in ("", old_pw)
    assert new["recovery"]["redis_password"] not in ("", old_redis_pw)
    assert new["broadcast"] == doc["broadcast"]  # untouched
    with psycopg.connect(frag_pg(fresh, tid, "recovery")) as conn:
        assert conn.execute("SELECT code FROM orders").fetchall() == [("kept",)]
    r = fresh.child_config_fragment(tid, "recovery")["redis"]
    assert frag_redis(fresh, tid, "recovery").set(r["prefix"] + "x", 1)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(r["url"], username=r["username"], password=old_redis_pw).ping()
    if backend.kind == "embedded":
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(old_dsn)

    # The whole file lost: everything regenerated, data still there.
    fresh.secrets_path(tid).unlink()
    again = Provisioner(backend.settings, backend.servers)
    await again.provision(tid, ["recovery", "broadcast"], migration_dirs)
    with psycopg.connect(frag_pg(again, tid, "recovery")) as conn:
        assert conn.execute("SELECT code FROM orders").fetchall() == [("kept",)]


async def test_corrupt_secrets_file_is_moved_aside(backend: Backend, prov: Provisioner,
                                                   tenant_ids: Callable[[], str]) -> None:
    tid = tenant_ids()
    await prov.provision(tid, ["recovery"], {})
    prov.secrets_path(tid).write_text("this is [not toml")
    fresh = Provisioner(backend.settings, backend.servers)
    await fresh.provision(tid, ["recovery"], {})
    assert read_secrets(fresh, tid)["recovery"]["password"]
    aside = list(prov.secrets_path(tid).parent.glob(prov.secrets_path(tid).name + ".corrupt-*"))
    assert len(aside) == 1
    aside[0].unlink()
    with psycopg.connect(frag_pg(fresh, tid, "recovery")) as conn:
        conn.execute("SELECT 1")


async def test_purge_leaves_nothing(backend: Backend, prov: Provisioner, tenant_ids: Callable[[], str],
                                    migration_dirs: dict[str, Path]) -> None:
    tid, other = tenant_ids(), tenant_ids()
    await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    await prov.provision(other, ["recovery"], {})
    prefix = prov.child_config_fragment(tid, "recovery")["redis"]["prefix"]
    other_prefix = prov.child_config_fragment(other, "recovery")["redis"]["prefix"]
    rec = frag_redis(prov, tid, "recovery")
    with rec.pipeline(transaction=False) as p:
        for i in range(1234):  # more than one SCAN/UNLINK batch
            p.set(f"{prefix}k{i}", i)
        p.execute()
    frag_redis(prov, other, "recovery").set(other_prefix + "keep", 1)
    names = [prov.child_config_fragment(tid, s)["redis"]["username"] for s in ("recovery", "broadcast")]
    # Keys in another logical database (an older daemon let a tenant SELECT 7) go too.
    with backend.servers.redis.client(single_connection=True) as r7:
        r7.execute_command("SELECT", 7)
        r7.set(prefix + "moved1", 1)
        r7.set(prefix + "moved2", 2)
        r7.set(other_prefix + "keep7", 1)

    lines = await prov.purge(tid)
    for name in names:
        assert f"dropped database {name}" in lines
        assert f"dropped role {name}" in lines
        assert f"deleted Redis ACL user {name}" in lines
    assert f"deleted 1234 Redis keys {prefix}*" in lines
    assert f"deleted 2 Redis keys {prefix}* in database 7" in lines
    with backend.servers.redis.client(single_connection=True) as r7:
        r7.execute_command("SELECT", 7)
        assert list(r7.scan_iter(match=prefix + "*")) == []
        assert r7.get(other_prefix + "keep7") == b"1"
        r7.delete(other_prefix + "keep7")
    assert f"removed secrets file {prov.secrets_path(tid)}" in lines

    with backend.admin() as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = ANY(%s)", (names,)).fetchall()
        assert not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = ANY(%s)", (names,)).fetchall()
    with backend.redis_admin() as r:
        assert list(r.scan_iter(match=prefix + "*")) == []
        assert all(r.acl_getuser(n) is None for n in names)
        assert r.get(other_prefix + "keep") == b"1"
    assert not prov.secrets_path(tid).exists()
    with pytest.raises(NotFound):
        prov.child_config_fragment(tid, "recovery")
    assert await prov.purge(tid) == []  # idempotent
    # The other tenant is untouched.
    with psycopg.connect(frag_pg(prov, other, "recovery")) as conn:
        conn.execute("SELECT 1")


async def test_purge_one_service_keeps_the_other(backend: Backend, prov: Provisioner,
                                                 tenant_ids: Callable[[], str],
                                                 migration_dirs: dict[str, Path]) -> None:
    tid = tenant_ids()
    await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    lines = await prov.purge(tid, ["broadcast"])
    assert any(line.startswith("dropped database") for line in lines)
    assert not any("secrets file" in line for line in lines)
    assert set(read_secrets(prov, tid)) == {"recovery"}
    with psycopg.connect(frag_pg(prov, tid, "recovery")) as conn:
        conn.execute("SELECT count(*) FROM orders")


async def test_purge_without_secrets_file(backend: Backend, prov: Provisioner,
                                          tenant_ids: Callable[[], str]) -> None:
    tid = tenant_ids()
    await prov.provision(tid, ["recovery"], {})
    name = prov.child_config_fragment(tid, "recovery")["redis"]["username"]
    prov.secrets_path(tid).unlink()
    lines = await Provisioner(backend.settings, backend.servers).purge(tid)
    assert f"dropped database {name}" in lines and f"deleted Redis ACL user {name}" in lines


async def test_secrets_modes_and_no_leak(backend: Backend, prov: Provisioner, tenant_ids: Callable[[], str],
                                         migration_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    tid = tenant_ids()
    await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    path = prov.secrets_path(tid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    doc = read_secrets(prov, tid)
    assert set(doc) == {"recovery", "broadcast"}
    assert set(doc["recovery"]) == {"database", "role", "password", "redis_username", "redis_password",
                                    "key_prefix"}
    passwords = [t[k] for t in doc.values() for k in ("password", "redis_password")]
    assert len(set(passwords)) == 4 and all(len(p) >= 32 for p in passwords)
    # An Unavailable message must not carry one either.
    broken = Servers(backend.servers.postgres, ExternalRedis(RedisParams(url="unix:///nonexistent/redis.sock")))
    with pytest.raises(Unavailable) as exc:
        await Provisioner(backend.settings, broken).provision(tid, ["recovery"], {})
    await prov.purge(tid)
    out, err = capfd.readouterr()
    text = caplog.text + out + err + str(exc.value)
    assert "provisioned" in caplog.text
    for pw in passwords:
        assert pw not in text
    assert repr(prov.child_config_fragment) and "password" not in repr(backend.servers)
    if backend.kind == "embedded":
        # The server only ever saw SCRAM verifiers: its log holds no password either.
        log_text = (backend.settings.state_dir / "postgres" / "log").read_text(errors="replace")
        for pw in passwords:
            assert pw not in log_text


async def test_child_config_fragment(backend: Backend, prov: Provisioner, tenant_ids: Callable[[], str],
                                     migration_dirs: dict[str, Path]) -> None:
    tid = tenant_ids()
    with pytest.raises(NotFound):
        prov.child_config_fragment(tid, "recovery")
    await prov.provision(tid, ["recovery"], migration_dirs)
    frag = prov.child_config_fragment(tid, "recovery")
    assert set(frag) == {"postgres", "redis", "shared"}
    r = frag["redis"]
    assert r["prefix"] == f"{tid.lower().replace('-', '_')}:recovery:"
    assert r["username"] == f"{tid.lower().replace('-', '_')}_recovery"
    assert r["url"] == backend.servers.redis.url
    if backend.kind == "embedded":
        assert r["url"].startswith("unix://")
        assert psycopg.conninfo.conninfo_to_dict(frag["postgres"]["dsn"])["host"].startswith("/")
    with psycopg.connect(frag["postgres"]["dsn"]) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            r["username"], r["username"])
    # A fresh provisioner (daemon restart) reads it back from the secrets file.
    assert Provisioner(backend.settings, backend.servers).child_config_fragment(tid, "recovery") == frag


async def test_redis_unavailable_then_completed(backend: Backend, prov: Provisioner,
                                                tenant_ids: Callable[[], str],
                                                migration_dirs: dict[str, Path]) -> None:
    tid = tenant_ids()
    broken = dataclasses.replace(backend.servers, redis_server=ExternalRedis(RedisParams(url="redis://127.0.0.1:1/0")))
    with pytest.raises(Unavailable, match=r"^Redis at 127\.0\.0\.1:1 is unreachable: connection refused; "
                                          r"will retry$") as exc:
        await Provisioner(backend.settings, broken).provision(tid, ["recovery"], migration_dirs)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    pw = read_secrets(prov, tid)["recovery"]["password"]  # stored before the servers were touched
    # Half done (PostgreSQL yes, Redis no): the next run completes it with the same credentials.
    assert await prov.provision(tid, ["recovery"], migration_dirs) == {"recovery": []}
    assert read_secrets(prov, tid)["recovery"]["password"] == pw
    r = prov.child_config_fragment(tid, "recovery")["redis"]
    assert frag_redis(prov, tid, "recovery").set(r["prefix"] + "ok", 1)


async def test_missing_migrations_dir_is_failed_precondition(prov: Provisioner, tenant_ids: Callable[[], str],
                                                             tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="migrations of recovery"):
        await prov.provision(tenant_ids(), ["recovery"], {"recovery": tmp_path / "nope"})


async def test_broken_migration_is_failed_precondition(prov: Provisioner, tenant_ids: Callable[[], str],
                                                       tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_bad.sql").write_text("CREATE TABLE x (;")
    with pytest.raises(FailedPrecondition, match=r"migration of .*_recovery failed: syntax error"):
        await prov.provision(tenant_ids(), ["recovery"], {"recovery": d})


async def test_concurrent_provisioning_same_tenant(backend: Backend, prov: Provisioner,
                                                   tenant_ids: Callable[[], str],
                                                   migration_dirs: dict[str, Path]) -> None:
    tid = tenant_ids()
    other = Provisioner(backend.settings, backend.servers)  # e.g. a second daemon: no shared lock
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prov.provision, tid, ["recovery", "broadcast"], migration_dirs)
        nursery.start_soon(prov.provision, tid, ["recovery", "broadcast"], migration_dirs)
    await other.provision(tid, ["recovery", "broadcast"], migration_dirs)
    with psycopg.connect(frag_pg(other, tid, "recovery")) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (2,)


async def test_a_tenants_databases_are_set_up_side_by_side(backend: Backend, prov: Provisioner,
                                                            tenant_ids: Callable[[], str],
                                                            migration_dirs: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each CREATE DATABASE is 100-300 ms of waiting on the server: `tenant add` makes the two
    services' databases and the shared one at the same time, and the result is the same."""
    import threading
    import time

    from oraclewad.provision import shared

    lock, now, most = threading.Lock(), [0], [0]

    def overlapping(fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args: object) -> None:
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            try:
                time.sleep(0.2)
                fn(*args)
            finally:
                with lock:
                    now[0] -= 1
        return run

    monkeypatch.setattr(prov, "_pg_setup", overlapping(prov._pg_setup))
    monkeypatch.setattr(shared, "create", overlapping(shared.create))
    tid = tenant_ids()
    applied = await prov.provision(tid, ["recovery", "broadcast"], migration_dirs)
    assert most[0] == 3     # recovery's, broadcast's and the shared database at once
    assert applied == {"recovery": [1, 2], "broadcast": [1]}
    with psycopg.connect(frag_pg(prov, tid, "broadcast")) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (1,)
    shared_dsn = prov.child_config_fragment(tid, "recovery")["shared"]["dsn"]
    with psycopg.connect(shared_dsn) as conn:     # the grants came after both roles existed
        assert conn.execute("SELECT count(*) FROM suppressions").fetchone() == (0,)


# ---------------------------------------------------------------- embedded only


@EMBEDDED_ONLY
async def test_postgres_stopped_then_back(backend: Backend, tenant_ids: Callable[[], str],
                                          migration_dirs: dict[str, Path]) -> None:
    prov = Provisioner(backend.settings, backend.servers)
    pg = backend.servers.embedded_postgres
    assert pg is not None
    tid = tenant_ids()
    await trio.to_thread.run_sync(pg.stop)
    try:
        with pytest.raises(Unavailable) as exc:
            await prov.provision(tid, ["recovery"], migration_dirs)
        msg = str(exc.value)
        assert msg.startswith(f"PostgreSQL at {pg.address} is unreachable: ") and msg.endswith("; will retry")
        assert "Traceback" not in msg and "\n" not in msg
        assert exc.value.__cause__ is None
    finally:
        await trio.to_thread.run_sync(pg.start)
    assert await prov.provision(tid, ["recovery"], migration_dirs) == {"recovery": [1, 2]}

    # The retry helper: reports UNAVAILABLE while the server is down, then OK once it is back.
    tid2 = tenant_ids()
    statuses: list[str] = []
    retried = trio.Event()      # a second UNAVAILABLE: it did retry while the server was down

    def on_status(status: str) -> None:
        statuses.append(status)
        if len(statuses) >= 2:
            retried.set()

    await trio.to_thread.run_sync(pg.stop)
    try:
        async with trio.open_nursery() as nursery:
            async def provision() -> None:
                await prov.provision_with_retry(tid2, ["recovery"], migration_dirs, on_status=on_status,
                                                initial_delay=0.05, max_delay=0.2)
            nursery.start_soon(provision)
            with trio.fail_after(20):
                await retried.wait()
            assert all(s.startswith("UNAVAILABLE: ") for s in statuses[:2])
            await trio.to_thread.run_sync(pg.start)
    finally:
        await trio.to_thread.run_sync(pg.start)
    assert statuses[0].startswith("UNAVAILABLE: PostgreSQL at ") and statuses[0].endswith("will retry")
    assert statuses[-1] == "OK"
    with psycopg.connect(frag_pg(prov, tid2, "recovery")) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (2,)


@EMBEDDED_ONLY
async def test_postgres_dies_mid_session_is_unavailable(backend: Backend, tenant_ids: Callable[[], str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that goes away between statements (not only at connect) is Unavailable too."""
    prov = Provisioner(backend.settings, backend.servers)
    pg = backend.servers.embedded_postgres
    assert pg is not None
    original = Provisioner._ensure_role

    def stop_then_continue(self: Provisioner, conn: psycopg.Connection, *args: object) -> None:
        pg.stop()
        original(self, conn, *args)

    monkeypatch.setattr(Provisioner, "_ensure_role", stop_then_continue)
    try:
        with pytest.raises(Unavailable, match=r"PostgreSQL at .* is unreachable: .*; will retry"):
            await prov.provision(tenant_ids(), ["recovery"], {})
    finally:
        await trio.to_thread.run_sync(pg.start)
