"""The machine, as tests and bench scripts see it: /proc, loopback ports, the machine's own
PostgreSQL and Redis. One copy, imported by tests/harness.py and bench/_benchlib alike."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXTERNAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
EXTERNAL_REDIS = "redis://127.0.0.1:6379/0"


# ---- /proc -----------------------------------------------------------------------------------

def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3, the state, first), or None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def proc_state(pid: int) -> str | None:
    """'R', 'S', 'Z', ... or None once the pid is gone (reaped)."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z")


def start_time(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def _parents() -> dict[int, list[int]]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    return parents


def children_of(pid: int) -> set[int]:
    """Pids whose parent is pid (the daemon's supervised children)."""
    return set(_parents().get(pid, []))


def descendants(pid: int) -> list[int]:
    parents = _parents()
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


# ---- ports -----------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nobody listens on right now (for [control] tcp and tenant ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the machine's PostgreSQL and Redis ------------------------------------------------------

def external_servers_reachable() -> bool:
    try:
        import psycopg
        import redis

        with psycopg.connect(EXTERNAL_PG, connect_timeout=2):
            pass
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except Exception:
        return False
    return True


def drop_external(tenant_ids: Sequence[str]) -> None:
    """Remove what tests provisioned on the machine's servers (embedded ones vanish with tmp)."""
    import psycopg
    import redis
    from psycopg import sql

    names = [f"{t.lower().replace('-', '_')}_{s}" for t in tenant_ids
             for s in ("recovery", "broadcast", "shared")]
    with psycopg.connect(EXTERNAL_PG, autocommit=True) as conn:
        # Databases first: the shared one holds grants to the service roles.
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for name in names:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    r = redis.Redis(host="127.0.0.1", port=6379)
    for name in names:
        r.execute_command("ACL", "DELUSER", name)
    for t in tenant_ids:
        for key in r.scan_iter(match=f"{t.lower().replace('-', '_')}:*", count=1000):
            r.unlink(key)


def unique_id(prefix: str) -> str:
    """An id unique per run: the machine's PostgreSQL is shared by every test and bench run."""
    return f"{prefix}{os.urandom(4).hex()}"


class OraclectlFailed(AssertionError, RuntimeError):
    """oraclectl exited non-zero: a failed assertion to a test, a failed run to a bench script."""


def oraclectl(socket_path: Path, *args: str, timeout: float,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    """`oraclectl --socket SOCKET ARGS...` as the operator runs it (this interpreter's venv);
    check: a non-zero exit raises OraclectlFailed with what it printed."""
    argv = [str(Path(sys.executable).parent / "oraclectl"), "--socket", str(socket_path), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise OraclectlFailed(f"oraclectl {' '.join(args)} -> exit {result.returncode}\n"
                              f"{result.stdout}\n{result.stderr}")
    return result


# ---- daemon configs --------------------------------------------------------------------------

def write_daemon_config(root: Path, *, backend: str, port_range: tuple[int, int], policy: str = "",
                        extra: str = "") -> Path:
    """root/oraclewad.toml with everything under root and an empty root/tenants.d. backend
    "external": the machine's PostgreSQL and Redis (else embedded ones); `[metrics] listen = ""`
    (no metrics port) unless `extra` has its own [metrics] table."""
    servers = ""
    if backend == "external":
        servers = f'[postgres]\ndsn = "{EXTERNAL_PG}"\n[redis]\nurl = "{EXTERNAL_REDIS}"\n'
    (root / "tenants.d").mkdir(parents=True, exist_ok=True)
    metrics = "" if "[metrics]" in extra else '[metrics]\nlisten = ""'
    config = root / "oraclewad.toml"
    config.write_text(f"""
[daemon]
tenants_dir = "tenants.d"
state_dir = "state"
log_dir = "log"
run_dir = "run"
releases_dir = "releases"
[services]
port_range = [{port_range[0]}, {port_range[1]}]
{metrics}
[policy]
{policy}
{servers}
{extra}
""")
    return config


# ---- threads and processes -------------------------------------------------------------------

def in_threads(fn: Callable[[], object], count: int) -> None:
    """Run fn in `count` threads at once (a race), and wait for them all."""
    threads = [threading.Thread(target=fn) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
