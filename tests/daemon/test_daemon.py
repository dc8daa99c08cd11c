"""The daemon as an operator meets it: real processes, real signals, real PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from tests.harness import alive, children_of, free_port_base, unique_id, wait_for, write_tenant


def service_pids(daemon) -> dict[str, int]:  # type: ignore[no-untyped-def]
    rows = daemon.ctl_json("status")
    return {f"{r['tenant']}/{r['service']}": r["pid"] for r in rows if r.get("pid")}


def all_running(daemon, count: int):  # type: ignore[no-untyped-def]
    """The status rows once `count` services all run and are ready, else None."""
    result = daemon.ctl("--json", "status", check=False)
    if result.returncode != 0:  # a busy 2-core machine can miss oraclectl's deadline; ask again
        return None
    rows = [r for r in json.loads(result.stdout) if r["state"] != "invalid"]
    return len(rows) == count and all(r["state"] == "running" and r["ready"] for r in rows) and rows


def test_killed_child_comes_back_and_nobody_else_moves(make_daemon) -> None:
    daemon = make_daemon()
    a, b = unique_id(), unique_id()
    write_tenant(daemon.root, a)
    write_tenant(daemon.root, b)
    daemon.start()
    wait_for(lambda: all_running(daemon, 4), what="4 services running")
    before = service_pids(daemon)
    victim = f"{a}/recovery"
    os.kill(before[victim], signal.SIGKILL)
    wait_for(lambda: (p := service_pids(daemon).get(victim)) and p != before[victim]
             and all_running(daemon, 4), what="the killed child to come back")
    after = service_pids(daemon)
    assert after[victim] != before[victim]
    assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}
    row = next(r for r in daemon.ctl_json("status") if f"{r['tenant']}/{r['service']}" == victim)
    assert row["restarts"] == 1


def test_sigterm_stops_every_child_within_the_grace(make_daemon) -> None:
    daemon = make_daemon()
    write_tenant(daemon.root, unique_id())
    daemon.start()
    wait_for(lambda: all_running(daemon, 2), what="services running")
    children = children_of(daemon.proc.pid)
    assert len(children) >= 2
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    daemon.wait_message("STOPPING=1")
    assert daemon.proc.wait(15) == 0
    assert time.monotonic() - started < 3.0 + 5  # stop_grace is 3 s in the test config
    assert not [p for p in children if alive(p)]


def test_sigkill_of_the_daemon_takes_children_down_and_a_new_one_restarts_them(make_daemon) -> None:
    daemon = make_daemon()
    tid = unique_id()
    write_tenant(daemon.root, tid)
    daemon.start()
    rows = wait_for(lambda: all_running(daemon, 2), what="services running")
    ports = {r["service"]: r["port"] for r in rows}
    children = children_of(daemon.proc.pid)
    daemon.signal(signal.SIGKILL)
    daemon.proc.wait(5)
    killed_at = time.monotonic()
    wait_for(lambda: not [p for p in children if alive(p)], timeout=2.0,
             what="children to die with the daemon")
    assert time.monotonic() - killed_at < 2.0
    daemon.proc = None
    daemon.start()
    rows = wait_for(lambda: all_running(daemon, 2), what="services running again")
    assert {r["service"]: r["port"] for r in rows} == ports


def test_reload_touches_only_what_changed(make_daemon) -> None:
    daemon = make_daemon()
    keep, change, remove, add = (unique_id() for _ in range(4))
    for tid in (keep, change, remove):
        write_tenant(daemon.root, tid)
    daemon.start()
    wait_for(lambda: all_running(daemon, 6), what="6 services running")
    before = service_pids(daemon)
    write_tenant(daemon.root, change, '[broadcast.policy]\nstop_grace = 2.0\n')
    (daemon.root / "tenants.d" / f"{remove}.toml").unlink()
    write_tenant(daemon.root, add)
    (daemon.root / "tenants.d" / "broken.toml").write_text('id = "broken"\nservices = "everything"\n')
    daemon.signal(signal.SIGHUP)
    daemon.wait_message("READY=1")
    after = wait_for(lambda: all_running(daemon, 6) and service_pids(daemon), what="reloaded set running")
    assert after[f"{keep}/recovery"] == before[f"{keep}/recovery"]
    assert after[f"{keep}/broadcast"] == before[f"{keep}/broadcast"]
    assert after[f"{change}/recovery"] == before[f"{change}/recovery"]
    assert after[f"{change}/broadcast"] != before[f"{change}/broadcast"]
    assert f"{remove}/recovery" not in after and not alive(before[f"{remove}/recovery"])
    assert f"{add}/recovery" in after
    assert "broken.toml: services" in daemon.stderr()
    invalid = [r for r in daemon.ctl_json("status") if r["state"] == "invalid"]
    assert [r["tenant"] for r in invalid] == ["broken"]
    assert 'services: must be "all"' in invalid[0]["message"]


def test_a_second_daemon_on_the_same_state_refuses(make_daemon) -> None:
    first = make_daemon()
    first.start()
    second = make_daemon(first.root)
    second.start(wait_ready=False)
    assert second.proc.wait(30) == 1
    assert f"another oraclewad (pid {first.proc.pid})" in second.stderr()
    first.ctl("status")  # the first one's socket survived the attempt


def test_operator_stop_survives_a_daemon_restart(make_daemon) -> None:
    daemon = make_daemon()
    tid = unique_id()
    write_tenant(daemon.root, tid)
    daemon.start()
    wait_for(lambda: all_running(daemon, 2), what="services running")
    daemon.ctl("stop", tid, "broadcast")
    daemon.stop()
    daemon.start()
    rows = wait_for(lambda: (rows := daemon.ctl_json("status")) and any(r["ready"] for r in rows) and rows,
                    what="recovery running")
    state = {r["service"]: r["state"] for r in rows}
    assert state == {"recovery": "running", "broadcast": "stopped"}


def test_systemd_notify_protocol(make_daemon) -> None:
    daemon = make_daemon()
    daemon.start()  # READY=1 arrived on a real datagram socket
    ready = next(i for i, m in enumerate(daemon.messages) if m == "READY=1")
    assert any(m.startswith("STATUS=") for m in daemon.messages[:ready + 2])
    daemon.wait_message("WATCHDOG=1", timeout=5)  # WATCHDOG_USEC=3 s: a ping at least every second
    daemon.wait_message("WATCHDOG=1", timeout=5)
    daemon.signal(signal.SIGHUP)
    daemon.wait_message("RELOADING=1")
    daemon.wait_message("READY=1")
    daemon.signal(signal.SIGTERM)
    daemon.wait_message("STOPPING=1")
    assert daemon.proc.wait(15) == 0


def test_host_programs_run_under_the_same_policy(make_daemon) -> None:
    child = Path(__file__).resolve().parent.parent / "programs" / "child.py"
    daemon = make_daemon(extra=f"""
[programs.sidecar]
command = [{json.dumps(sys.executable)}, {json.dumps(str(child))}]
port = {free_port_base() + 150}
notify = true
""")
    daemon.start()
    row = wait_for(lambda: next((r for r in daemon.ctl_json("status") if r["tenant"] == "programs"
                                 and r["state"] == "running"), None), what="the sidecar running")
    assert row["service"] == "sidecar" and row["port"] == free_port_base() + 150
    os.kill(row["pid"], signal.SIGKILL)
    wait_for(lambda: next((r for r in daemon.ctl_json("status") if r["tenant"] == "programs"
                           and r["state"] == "running" and r["pid"] != row["pid"]), None),
             what="the sidecar back with a new pid")


def test_a_notify_reader_that_stops_reading_never_stalls_the_daemon(make_daemon) -> None:
    # Linux queues 10 datagrams per unix socket; at a ping every 0.1 s nobody reading fills it in 1 s.
    daemon = make_daemon()
    daemon.start(watchdog_usec=300_000)
    time.sleep(3)  # nothing to await: the point is that nobody reads meanwhile
    started = time.monotonic()
    daemon.ctl("status", timeout=10)
    assert time.monotonic() - started < 5


def test_prometheus_endpoint_reports_every_service(make_daemon) -> None:
    port = free_port_base() + 160
    daemon = make_daemon(extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    tid = unique_id()
    write_tenant(daemon.root, tid)
    (daemon.root / "tenants.d" / "broken.toml").write_text("id = 1\n")
    daemon.start()
    wait_for(lambda: all_running(daemon, 2), what="services running")
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert f'oraclewa_service_up{{service="recovery",tenant="{tid}"}} 1.0' in body
    assert f'oraclewa_service_state{{service="broadcast",state="running",tenant="{tid}"}} 1.0' in body
    assert 'oraclewa_tenants{state="ok"} 1.0' in body and "oraclewa_config_problems 1.0" in body
    assert 'oraclewa_tenants{state="invalid"}' in body
