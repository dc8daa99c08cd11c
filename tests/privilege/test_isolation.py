"""A compromised tenant service reaches nothing of another tenant's: real users, real servers.

The "attacker" is code of the test's choosing run with exactly the credentials of tenant A's
children (its uid/gid, no groups, no capabilities, no_new_privs), via the same setpriv call the
supervisor makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import oraclewad
from oraclewad.settings import load_settings
from oraclewad.supervisor.notify import abstract_name
from oraclewad.supervisor.process import SETPRIV, can_switch_users, identity_args
from oraclewad.tenants.uids import closed_to_others
from tests.daemon.test_daemon import all_running
from tests.harness import free_port_base, unique_id, wait_for, write_tenant

CLOSED = closed_to_others([Path(sys.executable), Path(oraclewad.__file__).parent])
pytestmark = pytest.mark.skipif(
    not can_switch_users() or CLOSED is not None,
    reason=f"needs root (or CAP_SETUID) and a checkout others can read ({CLOSED})")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def child_config(pid: int) -> dict:  # type: ignore[type-arg]
    """What the child was given on its config fd (as root we may read its descriptors). Found by
    its name, not OWA_CONFIG_FD: /proc/<pid>/environ of a forked child shows its template's."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if "memfd:oraclewa-config" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return json.loads(Path(f"/proc/{pid}/fd/{fd}").read_text())
    pytest.fail(f"pid {pid} holds no config memfd")


def run_as(uid: int, code: str, data: object) -> dict:  # type: ignore[type-arg]
    """`code` (which sets RESULT) as a tenant child would run it; returns RESULT."""
    program = "import json, sys\nDATA = json.loads(sys.stdin.read())\nRESULT = {}\n" + \
        textwrap.dedent(code) + "\nprint(json.dumps(RESULT))\n"
    proc = subprocess.run([SETPRIV, *identity_args(uid, uid), "--", sys.executable, "-c", program],
                          input=json.dumps(data), capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def two_tenants(make_daemon):  # type: ignore[no-untyped-def]
    port = free_port_base() + 170
    daemon = make_daemon(extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    a, b = unique_id("a"), unique_id("b")
    write_tenant(daemon.root, a)
    write_tenant(daemon.root, b)
    daemon.start()
    rows = wait_for(lambda: all_running(daemon, 4), timeout=90, what="services running")
    pids = {(r["tenant"], r["service"]): r["pid"] for r in rows}
    return daemon, a, b, pids, port


def test_each_tenant_runs_as_its_own_user_without_privileges(two_tenants) -> None:
    daemon, a, b, pids, _ = two_tenants
    uids = {}
    for (tenant, _service), pid in pids.items():
        st = proc_status(pid)
        real, effective, saved, fs = (int(x) for x in st["Uid"].split())
        assert real == effective == saved == fs
        assert set(st["Gid"].split()) == {str(real)}
        assert st["Groups"] == ""
        assert real not in (0, os.getuid())
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[caps], 16) == 0, (caps, st[caps])
        assert st["NoNewPrivs"] == "1"
        assert uids.setdefault(tenant, real) == real      # one user per tenant
        # Its private TMPDIR (and HOME) is its working directory.
        tmp = Path(f"/proc/{pid}/cwd").resolve()
        assert tmp.parent == (load_settings(daemon.config).shared_dir / "tmp").resolve()
        assert tmp.stat().st_uid == real and tmp.stat().st_mode & 0o777 == 0o700
    assert uids[a] != uids[b]
    remembered = json.loads((daemon.root / "state" / "uids.json").read_text())
    assert sorted(remembered.values()) == sorted(uids.values())


def credentials(daemon, tenant: str, service: str = "recovery") -> dict:  # type: ignore[no-untyped-def,type-arg]
    """The tenant-service's database and Redis credentials, read (as root) from the state folder."""
    import tomllib

    doc = tomllib.loads((daemon.root / "state" / "secrets" / f"{tenant}.toml").read_text())[service]
    shared = load_settings(daemon.config).shared_dir
    external = "[postgres]" in daemon.config.read_text()
    pg = {"host": "127.0.0.1", "port": 5432} if external else {"host": str(shared / "pg"), "port": 5432}
    rd = ({"host": "127.0.0.1", "port": 6379} if external
          else {"unix_socket_path": str(shared / "redis" / "redis.sock")})
    return {**doc, "pg": pg, "redis": rd, "external": external}


ATTACK = """
import errno, os, socket, struct
from pathlib import Path

def attempt(name, fn):
    try:
        RESULT[name] = ["ok", repr(fn())[:200]]
    except Exception as e:
        RESULT[name] = [type(e).__name__, str(e)[:200]]

# Every file under the daemon's state folder (the list was made by root).
for path in DATA["state_files"]:
    attempt("read " + path, lambda p=path: open(p, "rb").read(1))
attempt("list state", lambda: os.listdir(DATA["state_dir"]))

import psycopg
a, b = DATA["a"], DATA["b"]
attempt("pg own", lambda: psycopg.connect(**a["pg"], user=a["role"], password=a["password"],
                                          dbname=a["database"], connect_timeout=5).close())
attempt("pg b's db with own role", lambda: psycopg.connect(**a["pg"], user=a["role"], password=a["password"],
                                                          dbname=b["database"], connect_timeout=5).close())
attempt("pg postgres db", lambda: psycopg.connect(**a["pg"], user=a["role"], password=a["password"],
                                                  dbname="postgres", connect_timeout=5).close())
attempt("pg b's role without password",
        lambda: psycopg.connect(**a["pg"], user=b["role"], dbname=b["database"], connect_timeout=5).close())

import redis
r = redis.Redis(**a["redis"], username=a["redis_username"], password=a["redis_password"])
attempt("redis own", lambda: r.set(a["key_prefix"] + "x", "1"))
attempt("redis b's key", lambda: r.get(b["key_prefix"] + "probe"))
attempt("redis eval", lambda: r.eval("return 1", 0))
attempt("redis select", lambda: r.execute_command("SELECT", "1"))
attempt("redis scan", lambda: r.scan(0))

for pid in DATA["b_pids"]:
    attempt(f"kill {pid}", lambda p=pid: os.kill(p, 0))
    attempt(f"ptrace {pid}", lambda p=pid: open(f"/proc/{p}/mem", "rb").read(1))
    attempt(f"environ {pid}", lambda p=pid: open(f"/proc/{p}/environ", "rb").read(1))
    def forge(p=pid):
        creds = struct.pack("iII", p, os.getuid(), os.getgid())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendmsg([b"WATCHDOG=1"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)], 0,
                       "\\0" + DATA["notify"][1:])
    attempt(f"notify as {pid}", forge)
def take_metrics():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", DATA["metrics_port"]))
attempt("bind metrics port", take_metrics)
"""


def socket_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nobody listens on {port}")


def test_a_tenant_child_reaches_nothing_of_another_tenant(two_tenants) -> None:
    import redis

    daemon, a, b, pids, metrics_port = two_tenants
    uid_a = int(proc_status(pids[(a, "recovery")])["Uid"].split()[0])
    state_dir = daemon.root / "state"
    state_files = [str(p) for p in state_dir.rglob("*") if p.is_file() and "postgres" not in p.parts[-3:]]
    assert any(p.endswith(f"{a}.toml") for p in state_files)     # its own secrets are among them
    ca, cb = credentials(daemon, a), credentials(daemon, b)
    redis.Redis(**cb["redis"], username=cb["redis_username"], password=cb["redis_password"]).set(
        cb["key_prefix"] + "probe", "secret of b")
    result = run_as(uid_a, ATTACK, {
        "state_files": state_files, "state_dir": str(state_dir), "a": ca, "b": cb,
        "b_pids": [pid for (t, _), pid in pids.items() if t == b],
        "notify": abstract_name(load_settings(daemon.config).run_dir),
        "metrics_port": metrics_port})
    allowed = {"pg own", "redis own"}
    if ca["external"]:
        # The machine's PostgreSQL trusts loopback and lets PUBLIC into `postgres`: the daemon
        # warns about both (see the check tests); on its embedded server both are refused.
        allowed |= {"pg b's role without password", "pg postgres db"}
        assert "lets roles log in without a password (pg_hba.conf `trust`)" in daemon.stderr()
    for name, (outcome, detail) in result.items():
        if name in allowed:
            assert outcome == "ok", (name, detail)
        else:
            assert outcome != "ok", f"tenant {a}'s user could: {name} ({detail})"
    assert result["redis b's key"][0] == "NoPermissionError"
    assert result["redis eval"][0] == "NoPermissionError"
    assert result["redis select"][0] == "NoPermissionError"
    # No child holds the daemon's metrics socket: none can answer a scrape.
    inode = socket_inode(metrics_port)
    for pid in pids.values():
        held = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            # A live service opens and closes descriptors (connections, probes) between the two
            # reads; an inherited socket would stay.
            with contextlib.suppress(FileNotFoundError):
                held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        assert f"socket:[{inode}]" not in held
