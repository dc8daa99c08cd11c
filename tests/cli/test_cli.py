"""oraclectl against a REAL `oraclewad run` on its unix socket (and TCP).

One daemon serves the whole module (`daemon` fixture); tests use tenant ids from unique_id() so they
never collide with each other or with other runs on the machine's shared PostgreSQL. oraclectl runs
in-process (`ctl`) where only its output matters, and as a real process where the process is the point
(exit codes from the shell, $OWA_SOCKET, `logs -f`).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket as socketlib
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    Daemon,
    control_daemon,
    ctl_in_process,
    free_port,
    running_tenant,
    tcp_address,
    unique_id,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

ENV_FILE = """\
# old per-client config
export CLIENT_ID={tenant}
CLIENT_NAME="Loja ABC Online"
SERVICE_TYPE=all
RECOVERY_PORT={recovery}
BROADCAST_PORT={broadcast}
ANTIBAN_DELAY_MIN=30000
ANTIBAN_DELAY_MAX=120000
EVOLUTION_API_URL=https://evo.example.com
EVOLUTION_API_KEY='s3cr3t-evo-key'
SOMETHING_NEW=1
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Daemon]:
    """One real daemon for the module, with TCP on and a second installed release."""
    root = tmp_path_factory.mktemp("cli")
    with control_daemon(root, backend=backend) as daemon:
        yield daemon


def ctl(daemon: Daemon, *argv: str, stdin: str | io.StringIO = "") -> tuple[int, str, str]:
    return ctl_in_process(daemon.socket_path, *argv, stdin=stdin)


def ctl_process(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "oraclectl", *argv], capture_output=True, text=True,
                            env=env, timeout=120)
    return result.returncode, result.stdout, result.stderr


def added(daemon: Daemon, *argv: str) -> str:
    code, out, err = ctl(daemon, "tenant", "add", *argv, "--timeout", "90")
    assert code == 0, err
    return out


def ours(out: str, *tenants: str) -> list[str]:
    """The table rows of these tenants (the module's daemon serves other tests' tenants too)."""
    return [line for line in out.splitlines() if line.split() and line.split()[0] in tenants]


def evolution_key_file(daemon: Daemon, tenant_id: str) -> Path:
    """Where the tenant file says its Evolution API key went (under the daemon's secrets dir)."""
    doc = tomllib.loads((daemon.root / "tenants.d" / f"{tenant_id}.toml").read_text())
    path = Path(doc["evolution"]["api_key_file"])
    assert path.parent == daemon.root / "state" / "secrets", path
    return path


def test_tenant_commands_table_and_json(daemon: Daemon, tmp_path: Path) -> None:
    imperio, loja = unique_id("imperio"), unique_id("lojaABC")  # sort like "imperio" < "lojaABC"
    key = tmp_path / "evo.key"
    key.write_text("evo-key-123\n")
    out = added(daemon, imperio, "--name", "Império Prêmios", "--evolution-url", "https://evo.example.com",
                "--evolution-key-file", str(key), "--recovery-instance", "imperio-1")
    assert f"tenant {imperio} added and ready" in out
    assert re.search(r"webhook URL: +http://127\.0\.0\.1:\d+/webhooks/orders", out)
    assert re.search(r"secrets in: +/", out) and "evo-key-123" not in out
    stored = evolution_key_file(daemon, imperio)
    assert stored.read_text().strip() == "evo-key-123" and (stored.stat().st_mode & 0o777) == 0o600

    code, out, err = ctl(daemon, "--json", "tenant", "add", loja, "--services", "recovery", "--no-wait")
    assert code == 0, err
    assert json.loads(out)["services"] == ["recovery"]

    code, out, _ = ctl(daemon, "tenant", "list")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "SERVICES"]
    assert [r.split()[0] for r in ours(out, imperio, loja)] == [imperio, loja]
    code, out, _ = ctl(daemon, "tenant", "list", "--json")  # --json after the command too
    assert [t["id"] for t in json.loads(out) if t["id"] in (imperio, loja)] == [imperio, loja]

    code, out, _ = ctl(daemon, "tenant", "show", imperio)
    assert code == 0 and out.startswith(f"tenant {imperio} (Império Prêmios)") and "recovery port:" in out
    code, out, _ = ctl(daemon, "--json", "tenant", "show", imperio)
    shown = json.loads(out)
    assert shown["ports"]["recovery"] > 0 and shown["states"][0]["pid"] > 0  # int64 stays a number

    code, out, err = ctl(daemon, "tenant", "add", imperio)
    assert code == 1 and "already exists" in err and err.startswith("oraclectl: already exists:")
    code, out, err = ctl(daemon, "tenant", "add", imperio.upper())   # names the one that exists
    assert code == 1 and f"tenant {imperio!r} already exists" in err
    assert f"{imperio.upper()!r} is taken" in err
    code, out, err = ctl(daemon, "tenant", "add", "9lives")
    assert code == 1 and "invalid argument: id: invalid tenant id '9lives'" in err

    code, out, err = ctl(daemon, "tenant", "remove", loja, "--purge")  # stdin is not a TTY
    assert code == 2 and "--yes" in err
    code, out, _ = ctl(daemon, "tenant", "remove", loja, "--purge", "--yes")
    assert code == 0 and f"tenant {loja} removed and purged" in out
    code, out, _ = ctl(daemon, "--json", "tenant", "remove", imperio)
    removed = json.loads(out)
    assert set(removed) == {"id", "purged", "actions"}
    assert removed["id"] == imperio and removed["purged"] is False
    actions = removed["actions"]
    assert re.fullmatch(rf"moved {imperio}\.[0-9TZ-]+\.toml to \S+/\.removed", actions[0]), actions
    assert f"stopped {imperio}/recovery" in actions
    assert actions[-1].startswith("kept databases, Redis keys, secrets, ports and logs")
    code, out, err = ctl(daemon, "tenant", "show", imperio)
    assert code == 1 and "not found" in err


def test_removed_tenants_are_listed_restored_and_purged_completely(daemon: Daemon) -> None:
    tid = unique_id("kept")
    added(daemon, tid)
    ports = json.loads(ctl(daemon, "--json", "tenant", "show", tid)[1])["ports"]
    book = daemon.root / "state" / "ports.json"
    logs = daemon.root / "log" / tid
    assert logs.is_dir()
    code, out, err = ctl(daemon, "tenant", "remove", tid)
    assert code == 0 and f"oraclectl tenant purge {tid}" in out, err

    code, out, err = ctl(daemon, "tenant", "list", "--removed")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["ID", "REMOVED", "SIZE"]
    block = out[out.index(f"\n{tid} "):]
    assert re.match(rf"\n{tid} +\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d +\d+\.\d(KiB|MiB)", block)
    for kept in (f"kept: database {tid}_recovery ", f"kept: database {tid}_broadcast ",
                 f"kept: logs {logs}", "kept: secrets ",
                 f"kept: ports broadcast:{ports['broadcast']}, recovery:{ports['recovery']}"):
        assert kept in block, block
    listed = {t["id"]: t for t in json.loads(ctl(daemon, "--json", "tenant", "list", "--removed")[1])}
    assert listed[tid]["size_bytes"] > 1_000_000 and listed[tid]["removed_at"] > time.time() - 600

    code, _, err = ctl(daemon, "tenant", "add", tid.upper())   # the kept data is not up for grabs
    assert code == 1 and f"tenant {tid!r} was removed with its data kept" in err
    assert not (daemon.root / "tenants.d" / f"{tid.upper()}.toml").exists()

    code, out, err = ctl(daemon, "tenant", "restore", tid, "--timeout", "90")
    assert code == 0 and f"tenant {tid} restored and ready" in out, err
    assert json.loads(ctl(daemon, "--json", "tenant", "show", tid)[1])["ports"] == ports
    code, _, err = ctl(daemon, "tenant", "purge", tid, "--yes")
    assert code == 1 and f"tenant remove {tid} --purge" in err   # not removed: nothing purged

    ctl(daemon, "tenant", "remove", tid)
    code, out, err = ctl(daemon, "tenant", "remove", tid, "--purge", "--yes")  # kept data can be purged
    assert code == 0, err
    for line in (f"freed {tid}/recovery port {ports['recovery']}",
                 f"freed {tid}/broadcast port {ports['broadcast']}",
                 f"deleted logs {logs}", f"dropped database {tid}_broadcast", "deleted retired tenant file"):
        assert line in out, out
    assert not [unit for unit in json.loads(book.read_text()) if unit.startswith(f"{tid}/")]
    assert not logs.exists()
    assert not list((daemon.root / "state" / "secrets").glob(f"{tid}.*"))
    assert not list((daemon.root / "tenants.d" / ".removed").glob(f"{tid}.*"))
    assert f"\n{tid} " not in ctl(daemon, "tenant", "list", "--removed")[1]
    code, _, err = ctl(daemon, "tenant", "purge", tid, "--yes")
    assert code == 1 and "not found" in err


@pytest.fixture(scope="module")
def tenant(daemon: Daemon) -> str:
    """A running tenant the service, logs and TCP tests share; each leaves it running."""
    return running_tenant(daemon, "imperio")


def test_service_commands_table_and_json(daemon: Daemon, tenant: str) -> None:
    code, out, _ = ctl(daemon, "status")
    assert out.splitlines()[0].split() == [
        "TENANT", "SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "RELEASE", "READY", "PORT"]
    code, out, _ = ctl(daemon, "status", tenant)
    lines = out.splitlines()
    assert len(lines) == 3 and all(" running " in line and " yes " in line for line in lines[1:])
    code, out, _ = ctl(daemon, "--json", "status", tenant)
    rows = json.loads(out)
    assert {r["service"] for r in rows} == {"recovery", "broadcast"}
    assert all(isinstance(r["pid"], int) for r in rows)

    code, out, _ = ctl(daemon, "stop", tenant, "broadcast")
    assert code == 0 and " stopped " in out and "broadcast" in out
    code, out, _ = ctl(daemon, "--json", "stop", tenant, "broadcast")
    assert json.loads(out)[0]["pid"] is None  # unset optional -> null
    code, out, _ = ctl(daemon, "start", tenant)
    assert code == 0 and out.count(" running ") == 2
    pid = next(r["pid"] for r in rows if r["service"] == "recovery")
    code, out, _ = ctl(daemon, "--json", "restart", tenant, "recovery")
    restarted = json.loads(out)
    assert [r["service"] for r in restarted] == ["recovery"] and restarted[0]["pid"] != pid

    code, out, _ = ctl(daemon, "health", tenant)
    assert code == 0 and out.splitlines()[0].split() == ["TENANT", "SERVICE", "STATE", "HEALTH", "DETAIL"]
    health_rows = [line.split()[:4] for line in out.splitlines()[1:] if not line.startswith(" ")]
    assert sorted(health_rows) == [[tenant, "broadcast", "running", "ok"],
                                   [tenant, "recovery", "running", "ok"]]
    checks = [line.split()[:2] for line in out.splitlines() if line.startswith("    ")]
    names = [c[0] for c in checks]
    assert {"postgres", "redis", "schema"} <= set(names) and names[:len(names) // 2] == sorted(
        names[:len(names) // 2])     # each service's checks in a stable (sorted) order
    assert all(c[1] == "ok" for c in checks if c[0] in ("postgres", "redis", "schema"))
    code, out, _ = ctl(daemon, "--json", "health", tenant)
    assert json.loads(out)[0]["checks"]["postgres"]["latency_ms"] > 0
    orders = {tuple(json.loads(ctl(daemon, "--json", "health", tenant)[1])[0]["checks"]) for _ in range(5)}
    tables = {ctl(daemon, "health", tenant)[1].splitlines()[1].split()[3] for _ in range(5)}
    assert len(orders) == 1 and list(next(iter(orders))) == sorted(next(iter(orders)))  # stable order
    assert len(tables) == 1

    code, out, _ = ctl(daemon, "metrics", tenant)
    header, first = out.splitlines()[:2]
    columns = dict(zip(header.split(), first.split(), strict=True))
    assert code == 0 and columns["RSS"].endswith("MiB") and columns["CPU"].endswith("s")
    assert re.fullmatch(r"\d+s|\d+m\d\ds", columns["UPTIME"]) and columns["LOGS"][-1] == "B"
    code, out, _ = ctl(daemon, "--json", "metrics", tenant)
    assert json.loads(out)[0]["figures"]["rss_bytes"] > 1_000_000

    bad = daemon.root / "tenants.d" / f"{unique_id('bad')}.toml"
    bad.write_text(f'id = "{bad.stem}"\nservices = "everything"\n[recovery]\nport = 0\n'
                   '[antiban]\nstratgy = "moderate"\n')
    try:
        code, out, _ = ctl(daemon, "reload")
        assert code == 1 and "unchanged: " in out and f"{tenant}/recovery" in out  # problems: exit 1
        assert "problem:" in out and bad.name in out
        code, out, _ = ctl(daemon, "--json", "reload")
        assert f"{tenant}/recovery" in json.loads(out)["unchanged"]
        code, out, _ = ctl(daemon, "status")
        assert len(ours(out, bad.stem)) == 1            # one row for the file, however many problems
        under = out[out.index(f"\n  {bad.name}:"):].splitlines()[2:5]
        assert [line.split(":")[0].strip() for line in under] == [
            "antiban.stratgy", "services", "recovery.port"], under
    finally:
        bad.unlink()

    code, out, _ = ctl(daemon, "releases")
    lines = out.splitlines()
    assert lines[0].split() == ["VERSION", "SCHEMA", "TENANTS", "PYTHON"]
    assert lines[1].split()[0] == "bundled" and tenant in lines[1]
    assert lines[2].split()[:3] == ["2.1.0", "-", "-"]
    code, out, _ = ctl(daemon, "--json", "releases")
    assert [r["version"] for r in json.loads(out)] == ["bundled", "2.1.0"]

    code, out, err = ctl(daemon, "history", tenant)
    assert code == 0 and out.strip() == "no history"
    code, out, err = ctl(daemon, "rollback", tenant)
    assert code == 1 and "no earlier stable release" in err
    code, out, err = ctl(daemon, "deploy", tenant)
    assert code == 2 and "needs a tenant and a VERSION" in err
    code, _, err = ctl(daemon, "deploy", tenant, "v2.2.0")
    assert code == 1 and "release '2.2.0' is not installed" in err  # v2.2.0 and 2.2.0 are the same


def test_logs_and_events(daemon: Daemon, tenant: str) -> None:
    wait_for(lambda: all(r["ready"] for r in json.loads(ctl(daemon, "--json", "status", tenant)[1])),
             what="the tenant ready")
    log = daemon.root / "log" / tenant / "recovery" / "combined.log"
    with log.open("a") as f:
        f.writelines(f"line {i}\n" for i in range(10))
    code, out, _ = ctl(daemon, "logs", tenant, "recovery", "-n", "3")
    assert code == 0 and out.splitlines() == ["line 7", "line 8", "line 9"]
    code, out, _ = ctl(daemon, "logs", tenant, "-n", "1")
    assert sorted(out.splitlines())[0].startswith(f"{tenant}/broadcast | ")
    assert f"{tenant}/recovery  | line 9" in out
    code, out, _ = ctl(daemon, "--json", "logs", tenant, "recovery", "-n", "2")
    assert [json.loads(x) for x in out.splitlines()] == [   # raw stderr lines become records
        {"tenant": tenant, "service": "recovery", "level": "error", "channel": "stderr", "msg": "line 8"},
        {"tenant": tenant, "service": "recovery", "level": "error", "channel": "stderr", "msg": "line 9"},
    ]
    code, _, err = ctl(daemon, "logs", tenant, "recovery", "--channel", "webhook")
    assert code == 1 and "no 'webhook' log" in err

    code, out, _ = ctl(daemon, "events")
    assert code == 0 and f"{tenant}  tenant_added" in out and f"{tenant}/recovery  state  running" in out
    code, out, _ = ctl(daemon, "--json", "events", "--tenant", tenant, "-n", "2")
    assert [json.loads(x)["kind"] for x in out.splitlines()] == ["state", "state"]

    # Follow mode as a real process: lines written after it starts arrive. The writer repeats its line
    # until it shows up, so a slow process start (a loaded machine) cannot make the test miss it.
    argv = ["--socket", str(daemon.socket_path), "logs", tenant, "recovery", "-n", "0", "-f"]
    proc = subprocess.Popen([sys.executable, "-m", "oraclectl", *argv], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    buf = b""
    seen = threading.Event()

    def write_until_seen() -> None:
        while not seen.is_set():
            with log.open("a") as f:
                f.write("appended later\n")
            seen.wait(0.5)

    writer = threading.Thread(target=write_until_seen)
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while b"appended later" not in buf and time.monotonic() < deadline:
            buf += os.read(proc.stdout.fileno(), 4096)
    finally:
        seen.set()
        writer.join()
        proc.terminate()
        proc.wait()
    assert set(buf.decode().split()) == {"appended", "later"}


def test_subprocess_help_usage_and_unreachable(daemon: Daemon, tmp_path: Path) -> None:
    socket = str(daemon.socket_path)
    code, out, _ = ctl_process("--socket", socket, "--json", "status")
    assert code == 0 and isinstance(json.loads(out), list)
    code, out, _ = ctl_process("--help")
    assert code == 0 and "examples:" in out and "exit codes" in out
    for argv in (("tenant", "--help"), ("tenant", "add", "--help"), ("logs", "--help")):
        code, out, _ = ctl_process(*argv)
        assert code == 0 and "examples:" in out, argv
    code, _, err = ctl_process("tenant", "add")
    assert code == 2 and "required: id" in err
    code, _, err = ctl_process("--addr", "127.0.0.1:1", "status")
    assert code == 2 and "--token-file" in err

    missing = tmp_path / "nowhere" / "oraclewad.sock"
    code, out, err = ctl_process("--socket", str(missing), "status")
    assert code == 3 and out == ""
    assert str(missing) in err and "systemctl status oraclewad" in err and "make run" in err
    # A stale socket file with no daemon behind it is unreachable too, and so is a dead TCP port.
    stale = tmp_path / "stale.sock"
    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.bind(str(stale))
    code, _, err = ctl_process("--socket", str(stale), "status")
    assert code == 3 and str(stale) in err
    token = tmp_path / "token"
    token.write_text("x" * 43)
    code, _, err = ctl_process("--addr", "127.0.0.1:9", "--token-file", str(token), "status")
    assert code == 3 and "tcp://127.0.0.1:9" in err
    # $OWA_SOCKET picks the socket when --socket is absent.
    code, out, _ = ctl_process("--json", "tenant", "list", env={**os.environ, "OWA_SOCKET": socket})
    assert code == 0 and [t["id"] for t in json.loads(out)] == [
        t["id"] for t in json.loads(ctl(daemon, "--json", "tenant", "list")[1])]
    code, _, err = ctl_process("status", env={**os.environ, "OWA_SOCKET": str(missing)})
    assert code == 3 and str(missing) in err


def test_tcp_through_the_cli(daemon: Daemon, tenant: str, tmp_path: Path) -> None:
    tcp = tcp_address(daemon)
    token_file = daemon.root / "state" / "secrets" / "control.token"
    code, out, err = ctl_process("--addr", tcp, "--token-file", str(token_file), "--json", "status")
    assert code == 0, err
    assert tenant in {r["tenant"] for r in json.loads(out)}
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-at-all")
    code, _, err = ctl_process("--addr", tcp, "--token-file", str(wrong), "status")
    assert code == 1 and "unauthenticated" in err


def test_concurrent_cli_adds_of_one_id(daemon: Daemon) -> None:
    twin = unique_id("twin")
    results: list[tuple[int, str, str]] = []
    def one() -> None:
        results.append(ctl(daemon, "tenant", "add", twin, "--no-wait"))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(code for code, _, _ in results) == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    assert "already exists" in loser[2]


def test_import_env_dry_run_and_add(daemon: Daemon, tmp_path: Path) -> None:
    tid = unique_id("lojaABC")
    recovery, broadcast = free_port(), free_port()
    env = tmp_path / f".env.{tid}"
    env.write_text(ENV_FILE.format(tenant=tid, recovery=recovery, broadcast=broadcast))
    code, out, err = ctl(daemon, "tenant", "import-env", str(env), "--dry-run")
    assert code == 0
    assert "s3cr3t-evo-key" not in out + err
    assert 'api_key_file = "<from EVOLUTION_API_KEY, stored 0600 on add>"' in out
    assert "warning: unknown key SOMETHING_NEW" in err
    assert not (daemon.root / "tenants.d" / f"{tid}.toml").exists()  # a dry run adds nothing
    assert ctl(daemon, "tenant", "show", tid)[0] == 1
    code, out, err = ctl(daemon, "--json", "tenant", "import-env", str(env), "--dry-run")
    doc = json.loads(out)
    assert doc["tenant"]["antiban"] == {"delay_min": 30.0, "delay_max": 120.0}
    assert "s3cr3t-evo-key" not in out

    code, out, err = ctl(daemon, "tenant", "import-env", str(env), "--timeout", "90")
    assert code == 0, err
    assert "s3cr3t-evo-key" not in out + err
    assert f"tenant {tid} added and ready" in out
    view = json.loads(ctl(daemon, "--json", "tenant", "show", tid)[1])
    assert view["ports"] == {"recovery": recovery, "broadcast": broadcast}
    key = evolution_key_file(daemon, tid)
    assert key.read_text().strip() == "s3cr3t-evo-key" and (key.stat().st_mode & 0o777) == 0o600
    assert "s3cr3t-evo-key" not in (daemon.root / "tenants.d" / f"{tid}.toml").read_text()


def test_oraclectl_imports_no_daemon_modules() -> None:
    code = (
        "import sys, oraclectl.main, oraclectl.envimport\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.startswith('oraclewad') and not m.startswith('oraclewad._proto'))\n"
        "assert bad == ['oraclewad'], bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_purge_asks_on_a_terminal(daemon: Daemon) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    keep, drop = unique_id("keepme"), unique_id("dropme")
    for tid in (keep, drop):
        assert ctl(daemon, "tenant", "add", tid, "--no-wait")[0] == 0

    def listed() -> set[str]:
        return {t["id"] for t in json.loads(ctl(daemon, "--json", "tenant", "list")[1])}

    code, out, err = ctl(daemon, "tenant", "remove", keep, "--purge", stdin=Terminal("no\n"))
    assert code == 1 and "Type the tenant id to confirm" in err and "nothing removed" in err
    assert keep in listed()
    code, out, err = ctl(daemon, "tenant", "remove", drop, "--purge", stdin=Terminal(drop + "\n"))
    assert code == 0 and f"tenant {drop} removed and purged" in out
    assert drop not in listed() and keep in listed()


def test_version_config_ghost_events_check_lookup_and_completion(daemon: Daemon, tenant: str,
                                                                  tmp_path: Path) -> None:
    code, out, _ = ctl_process("--version")
    assert code == 0 and re.fullmatch(r"oraclectl \d+\.\d+\.\d+\n", out)
    result = subprocess.run([sys.executable, "-m", "oraclewad.cli", "--version"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and re.fullmatch(r"oraclewad \d+\.\d+\.\d+\n", result.stdout)

    # --config finds the socket the way the daemon does (run_dir relative to the config's folder).
    code, out, err = ctl_process("--config", str(daemon.config), "status", tenant)
    assert code == 0 and f"{tenant} " in out, err
    code, _, err = ctl_process("--config", str(tmp_path / "missing.toml"), "status")
    assert code == 2 and "--config" in err and "cannot read" in err

    code, out, err = ctl(daemon, "events", "--tenant", "ghost")
    assert code == 1 and "not found" in err and "ghost" in err
    code, out, _ = ctl(daemon, "events", "--tenant", tenant, "-n", "1")
    assert code == 0 and tenant in out

    env = {k: v for k, v in os.environ.items() if k != "OWA_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "oraclewad.cli", "check"], capture_output=True,
                            text=True, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert f"looked for {tmp_path / 'oraclewad.toml'}, /etc/oraclewa/oraclewad.toml" in result.stderr

    code, script, _ = ctl_process("completion", "bash")
    assert code == 0 and "complete " in script
    (tmp_path / "oraclectl.bash").write_text(script)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (f"source {tmp_path / 'oraclectl.bash'}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                 "_shtab_oraclectl; printf '%s\\n' \"${COMPREPLY[@]}\"")
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60,
                              env={**env, "OWA_SOCKET": str(daemon.socket_path),
                                   "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"})
        return done.stdout.split()

    assert "tenant" in complete("oraclectl", "ten")
    assert "--removed" in complete("oraclectl", "tenant", "list", "--rem")
    assert tenant in complete("oraclectl", "logs", tenant[:9])        # ids come from the daemon
    code, script, _ = ctl_process("completion", "zsh")
    assert code == 0 and script.startswith("#compdef oraclectl") and "_oraclectl_tenants" in script
