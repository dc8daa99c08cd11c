"""A tenant that changes its own PostgreSQL password does not lock itself out (issue 7 item 6).

PostgreSQL lets every role change its own password (no privilege can take that away), so the
daemon re-asserts the credentials: automatically when a service exits 69 (cannot log in), and on
`oraclectl tenant repair ID`. Runs on embedded servers: the machine's PostgreSQL trusts every
local login, where a changed password would lock nobody out.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path

import psycopg
from psycopg import sql

from tests.faults.helpers import ready_pids, service_rows
from tests.harness import unique_id, wait_for, write_tenant


def change_own_password(root: Path, tenant: str, service: str = "recovery") -> None:
    """What a compromised or careless tenant service can do with its own credentials."""
    secrets = tomllib.loads((root / "state" / "secrets" / f"{tenant.lower()}.toml").read_text())[service]
    lines = (root / "state" / "postgres" / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3], lines[4]
    with psycopg.connect(host=socket_dir, port=port, user=secrets["role"], password=secrets["password"],
                         dbname=secrets["database"], autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD 'x'").format(sql.Identifier(secrets["role"])))


def state_of(daemon, tenant: str, service: str) -> dict | None:  # type: ignore[no-untyped-def,type-arg]
    return next((r for r in service_rows(daemon) if r["tenant"] == tenant and r["service"] == service), None)


def test_a_tenant_that_changes_its_own_password_gets_its_credentials_back(make_daemon) -> None:
    root = Path(tempfile.mkdtemp(prefix="owa-lockout-"))  # pgserver's user must traverse it
    try:
        daemon = make_daemon(root, backend="embedded")
        victim, other = unique_id(), unique_id()
        write_tenant(daemon.root, victim)
        write_tenant(daemon.root, other)
        daemon.start()
        wait_for(lambda: ready_pids(daemon, [victim, other]), timeout=60, what="both tenants ready")
        others = ready_pids(daemon, [other])

        # Automatic: the restarted service cannot log in (exit 69); the daemon re-provisions.
        change_own_password(root, victim)
        daemon.ctl("restart", victim, "recovery", check=False, timeout=60)
        wait_for(lambda: ready_pids(daemon, [victim]), timeout=40,
                 what="the locked-out service running again without a daemon restart")
        events = daemon.ctl("events", "--tenant", victim, "-n", "200").stdout
        assert "credentials re-asserted" in events, events

        # By hand, within the automatic re-assert's 30 s pause: `tenant repair`.
        change_own_password(root, victim)
        daemon.ctl("restart", victim, "recovery", check=False, timeout=60)
        row = state_of(daemon, victim, "recovery")
        assert row is not None and row["state"] != "running", row
        repaired = daemon.ctl("tenant", "repair", victim, timeout=60)
        assert "provisioned" in repaired.stdout
        wait_for(lambda: ready_pids(daemon, [victim]), timeout=30, what="running again after repair")

        assert ready_pids(daemon, [other]) == others
        ghost = daemon.ctl("tenant", "repair", "ghost", check=False)
        assert ghost.returncode == 1 and "ghost" in ghost.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
