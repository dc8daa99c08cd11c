"""A running tenant is never displaced by a file that appeared later (issue 8 items 1 and 2)."""

from __future__ import annotations

import subprocess

from tests.daemon.test_daemon import all_running, service_pids
from tests.harness import BIN, unique_id, wait_for, write_tenant


def check(daemon) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([str(BIN / "oraclewad"), "check", "--config", str(daemon.config)],
                          capture_output=True, text=True, timeout=60)


def test_a_case_duplicate_or_a_port_claim_is_refused_and_the_incumbent_keeps_running(make_daemon) -> None:
    daemon = make_daemon()
    tid = unique_id("imperio")
    write_tenant(daemon.root, tid)
    daemon.start()
    rows = wait_for(lambda: all_running(daemon, 2), what="the incumbent running")
    assert "started: 1 tenant: 2 " in daemon.stderr()    # not "1 tenants"
    pids = service_pids(daemon)
    ports = {r["service"]: r["port"] for r in rows}

    # A file spelling the same id in capitals sorts first, and used to take the tenant over.
    twin = tid.upper()
    write_tenant(daemon.root, twin)
    result = daemon.ctl("reload", check=False)
    assert result.returncode == 1, result.stdout
    assert f"{twin}.toml: id: '{twin}' clashes with '{tid}' in {tid}.toml" in result.stdout
    assert service_pids(daemon) == pids
    invalid = [r for r in daemon.ctl_json("status") if r["state"] == "invalid"]
    assert [r["tenant"] for r in invalid] == [twin] and f"{tid}.toml" in invalid[0]["message"]
    checked = check(daemon)
    assert checked.returncode == 1 and f"{twin}.toml: id:" in checked.stderr
    events = daemon.ctl("events", "-n", "50").stdout
    assert "reload  added -; removed -; restarted -" in events and "['" not in events
    assert f"error: {daemon.root / 'tenants.d' / tid}.toml" not in checked.stderr
    (daemon.root / "tenants.d" / f"{twin}.toml").unlink()

    # An explicit port that imperio/recovery holds (and remembers) belongs to it.
    thief = unique_id("thief")
    write_tenant(daemon.root, thief, f"[recovery]\nport = {ports['recovery']}\n")
    result = daemon.ctl("reload", check=False)
    assert result.returncode == 1
    assert f"port {ports['recovery']} belongs to {tid}/recovery" in result.stdout
    assert service_pids(daemon) == pids
    after = {r["service"]: r["port"] for r in daemon.ctl_json("status", tid)}
    assert after == ports
    invalid = [r for r in daemon.ctl_json("status") if r["state"] == "invalid"]
    assert [r["tenant"] for r in invalid] == [thief] and f"{tid}/recovery" in invalid[0]["message"]
    checked = check(daemon)
    assert checked.returncode == 1
    claim = f"{thief}.toml: recovery.port: port {ports['recovery']} belongs to {tid}/recovery"
    assert claim in checked.stderr
