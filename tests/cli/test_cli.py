"""oraclectl against the real control server on a real unix socket (in-process Operations double)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from tests.control.double import Harness

ENV_FILE = """\
# old per-client config
export CLIENT_ID=lojaABC
CLIENT_NAME="Loja ABC Online"
SERVICE_TYPE=all
RECOVERY_PORT=4003
BROADCAST_PORT=4004
ANTIBAN_DELAY_MIN=30000
ANTIBAN_DELAY_MAX=120000
EVOLUTION_API_URL=https://evo.example.com
EVOLUTION_API_KEY='s3cr3t-evo-key'
SOMETHING_NEW=1
"""


async def test_tenant_commands_table_and_json(control: Harness, root: Path) -> None:
    key = root / "evo.key"
    key.write_text("evo-key-123\n")
    code, out, err = await control.ctl(
        "tenant",
        "add",
        "imperio",
        "--name",
        "Império Prêmios",
        "--evolution-url",
        "https://evo.example.com",
        "--evolution-key-file",
        str(key),
        "--instance",
        "imperio-1",
    )
    assert code == 0, err
    assert "tenant imperio added and ready" in out
    assert "webhook URL:  http://127.0.0.1:" in out and "/webhooks/orders" in out
    assert "secrets in:   " in out and "evo-key-123" not in out
    stored = root / "state" / "secrets" / "imperio.evolution.key"
    assert stored.read_text() == "evo-key-123" and (stored.stat().st_mode & 0o777) == 0o600

    code, out, _ = await control.ctl(
        "--json", "tenant", "add", "lojaABC", "--services", "recovery", "--no-wait"
    )
    assert code == 0
    assert json.loads(out)["services"] == ["recovery"]

    code, out, _ = await control.ctl("tenant", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "SERVICES"] and [r.split()[0] for r in rows] == [
        "imperio",
        "lojaABC",
    ]
    code, out, _ = await control.ctl("tenant", "list", "--json")  # --json after the command too
    assert [t["id"] for t in json.loads(out)] == ["imperio", "lojaABC"]

    code, out, _ = await control.ctl("tenant", "show", "imperio")
    assert code == 0 and out.startswith("tenant imperio (Império Prêmios)") and "recovery port:" in out
    code, out, _ = await control.ctl("--json", "tenant", "show", "imperio")
    shown = json.loads(out)
    assert shown["ports"]["recovery"] > 0 and shown["states"][0]["pid"] > 0  # int64 stays a number

    code, out, err = await control.ctl("tenant", "add", "imperio")
    assert code == 1 and "already exists" in err and err.startswith("oraclectl: already exists:")
    code, out, err = await control.ctl("tenant", "add", "9lives")
    assert code == 1 and "invalid argument: id: invalid tenant id '9lives'" in err

    code, out, err = await control.ctl("tenant", "remove", "lojaABC", "--purge")  # stdin is not a TTY
    assert code == 2 and "--yes" in err
    code, out, _ = await control.ctl("tenant", "remove", "lojaABC", "--purge", "--yes")
    assert code == 0 and "tenant lojaABC removed and purged" in out
    code, out, _ = await control.ctl("--json", "tenant", "remove", "imperio")
    assert json.loads(out) == {"id": "imperio", "purged": False, "actions": json.loads(out)["actions"]}
    code, out, err = await control.ctl("tenant", "show", "imperio")
    assert code == 1 and "not found" in err


async def test_service_commands_table_and_json(control: Harness) -> None:
    await control.add("imperio")
    code, out, _ = await control.ctl("status")
    lines = out.splitlines()
    assert lines[0].split() == [
        "TENANT",
        "SERVICE",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "RELEASE",
        "READY",
        "PORT",
    ]
    assert len(lines) == 3 and all(" running " in line and " yes " in line for line in lines[1:])
    code, out, _ = await control.ctl("--json", "status", "imperio")
    rows = json.loads(out)
    assert {r["service"] for r in rows} == {"recovery", "broadcast"} and all(
        isinstance(r["pid"], int) for r in rows
    )

    code, out, _ = await control.ctl("stop", "imperio", "broadcast")
    assert code == 0 and " stopped " in out and "broadcast" in out
    code, out, _ = await control.ctl("--json", "stop", "imperio", "broadcast")
    assert json.loads(out)[0]["pid"] is None  # unset optional -> null
    code, out, _ = await control.ctl("start", "imperio")
    assert code == 0 and out.count(" running ") == 2
    code, out, _ = await control.ctl("--json", "restart", "imperio", "recovery")
    assert json.loads(out)[0]["restarts"] == 1

    code, out, _ = await control.ctl("health")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["TENANT", "SERVICE", "STATUS"]
    assert "postgres=ok" in out and "redis=ok" in out
    code, out, _ = await control.ctl("--json", "health", "imperio")
    assert json.loads(out)[0]["checks"]["postgres"]["ms"] == 1.5

    code, out, _ = await control.ctl("metrics")
    assert code == 0 and "RSS_BYTES" in out and "39.1MiB" in out
    code, out, _ = await control.ctl("--json", "metrics", "imperio")
    assert json.loads(out)[0]["figures"]["requests_total"] == 12.0

    code, out, _ = await control.ctl("reload")
    assert code == 0 and "unchanged: imperio" in out and "problem:" in out
    code, out, _ = await control.ctl("--json", "reload")
    assert json.loads(out)["unchanged"] == ["imperio"]

    code, out, _ = await control.ctl("releases")
    assert out.split() == ["VERSION", "bundled", "2.1.0"]
    code, out, _ = await control.ctl("--json", "releases")
    assert json.loads(out) == [{"version": "bundled"}, {"version": "2.1.0"}]

    for argv in (
        ("deploy", "imperio", "v2.2.0"),
        ("rollback", "imperio"),
        ("rollback", "imperio", "2.1.0"),
        ("history", "imperio"),
        ("--json", "history", "imperio"),
    ):
        code, out, err = await control.ctl(*argv)
        assert code == 1 and out == "", argv
        assert "failed precondition" in err and "releases arrive with the releases issue" in err, argv
    code, _, err = await control.ctl("deploy", "imperio", "v2.2.0")
    assert "deploy 2.2.0 to imperio" in err  # v2.2.0 and 2.2.0 are the same


async def test_logs_and_events(control: Harness) -> None:
    await control.add("imperio")
    log = Path(control.ops.log_file("imperio", "recovery", "combined"))
    with log.open("a") as f:
        f.writelines(f"line {i}\n" for i in range(10))
    code, out, _ = await control.ctl("logs", "imperio", "recovery", "-n", "3")
    assert code == 0 and out.splitlines() == ["line 7", "line 8", "line 9"]
    code, out, _ = await control.ctl("logs", "imperio", "-n", "1")
    assert sorted(out.splitlines())[0].startswith("[broadcast] ") and "[recovery] line 9" in out
    code, out, _ = await control.ctl("--json", "logs", "imperio", "recovery", "-n", "2")
    assert [json.loads(x) for x in out.splitlines()] == [
        {"service": "recovery", "line": "line 8"},
        {"service": "recovery", "line": "line 9"},
    ]
    code, _, err = await control.ctl("logs", "imperio", "recovery", "--channel", "webhook")
    assert code == 1 and "no 'webhook' log" in err

    code, out, _ = await control.ctl("events")
    assert code == 0 and "imperio  tenant_added" in out and "imperio/recovery  state  running" in out
    code, out, _ = await control.ctl("--json", "events", "-n", "2")
    assert [json.loads(x)["kind"] for x in out.splitlines()] == ["state", "state"]

    # Follow mode as a real process: lines written after it starts arrive. The writer repeats its line
    # until it shows up, so a slow process start (a loaded machine) cannot make the test miss it.
    argv = ["--socket", str(control.socket), "logs", "imperio", "recovery", "-n", "0", "-f"]
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "oraclectl", *argv], stdout=-1)
    assert proc.stdout is not None
    buf = b""

    async def write_until_seen() -> None:
        while b"appended later" not in buf:
            with log.open("a") as f:
                f.write("appended later\n")
            await trio.sleep(0.5)

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_until_seen)
                while b"appended later" not in buf:
                    buf += await proc.stdout.receive_some(4096)
    finally:
        proc.terminate()
        await proc.wait()
    assert set(buf.decode().split()) == {"appended", "later"}


async def test_subprocess_help_usage_and_unreachable(control: Harness, root: Path) -> None:
    code, out, _ = await control.ctl_process("--socket", str(control.socket), "--json", "status")
    assert code == 0 and json.loads(out) == []
    code, out, _ = await control.ctl_process("--help")
    assert code == 0 and "examples:" in out and "exit codes" in out
    for argv in (("tenant", "--help"), ("tenant", "add", "--help"), ("logs", "--help")):
        code, out, _ = await control.ctl_process(*argv)
        assert code == 0 and "examples:" in out, argv
    code, _, err = await control.ctl_process("tenant", "add")
    assert code == 2 and "required: id" in err
    code, _, err = await control.ctl_process("--addr", "127.0.0.1:1", "status")
    assert code == 2 and "--token-file" in err

    missing = root / "nowhere" / "oraclewad.sock"
    code, out, err = await control.ctl_process("--socket", str(missing), "status")
    assert code == 3 and out == ""
    assert str(missing) in err and "systemctl status oraclewad" in err and "make run" in err
    # A stale socket file with no daemon behind it is unreachable too, and so is a dead TCP port.
    stale = root / "stale.sock"
    import socket as socketlib

    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.bind(str(stale))
    code, _, err = await control.ctl_process("--socket", str(stale), "status")
    assert code == 3 and str(stale) in err
    token = root / "token"
    token.write_text("x" * 43)
    code, _, err = await control.ctl_process("--addr", "127.0.0.1:9", "--token-file", str(token), "status")
    assert code == 3 and "tcp://127.0.0.1:9" in err
    # $OWA_SOCKET picks the socket when --socket is absent.
    env = {**os.environ, "OWA_SOCKET": str(control.socket)}
    code, out, _ = await control.ctl_process("status", env=env)
    assert code == 0 and out.startswith("no services")
    code, _, err = await control.ctl_process("status", env={**os.environ, "OWA_SOCKET": str(missing)})
    assert code == 3 and str(missing) in err


async def test_tcp_through_the_cli(root: Path) -> None:
    from tests.control.double import fast_limits, serving

    async with serving(root, limits=fast_limits(), tcp=True) as harness:
        control = harness.settings.control
        await harness.add("viatcp")
        code, out, err = await harness.ctl_process(
            "--addr", str(control.tcp), "--token-file", str(control.token_file), "--json", "status"
        )
        assert code == 0, err
        assert {r["tenant"] for r in json.loads(out)} == {"viatcp"}
        wrong = root / "wrong.token"
        wrong.write_text("not-the-token-at-all")
        code, _, err = await harness.ctl_process(
            "--addr", str(control.tcp), "--token-file", str(wrong), "status"
        )
        assert code == 1 and "unauthenticated" in err


async def test_concurrent_cli_adds_of_one_id(control: Harness) -> None:
    results: list[tuple[int, str, str]] = []

    async def add() -> None:
        results.append(await control.ctl("tenant", "add", "twin"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(add)
        nursery.start_soon(add)
    assert sorted(code for code, _, _ in results) == [0, 1]
    loser = next(r for r in results if r[0] == 1)
    assert "already exists" in loser[2]


async def test_import_env_dry_run_and_add(control: Harness, root: Path) -> None:
    env = root / ".env.lojaABC"
    env.write_text(ENV_FILE)
    code, out, err = await control.ctl("tenant", "import-env", str(env), "--dry-run")
    assert code == 0
    assert "s3cr3t-evo-key" not in out + err
    assert 'api_key_file = "<from EVOLUTION_API_KEY, stored 0600 on add>"' in out
    assert "warning: unknown key SOMETHING_NEW" in err
    assert control.ops.tenants == {}  # a dry run adds nothing
    code, out, err = await control.ctl("--json", "tenant", "import-env", str(env), "--dry-run")
    doc = json.loads(out)
    assert doc["tenant"]["antiban"] == {"delay_min": 30.0, "delay_max": 120.0}
    assert "s3cr3t-evo-key" not in out

    code, out, err = await control.ctl("tenant", "import-env", str(env))
    assert code == 0, err
    assert "s3cr3t-evo-key" not in out + err
    assert "tenant lojaABC added and ready" in out
    view = control.ops.get_tenant("lojaABC")
    assert view.ports == {"recovery": 4003, "broadcast": 4004}
    assert (root / "state" / "secrets" / "lojaABC.evolution.key").read_text() == "s3cr3t-evo-key"


async def test_oraclectl_imports_no_daemon_modules() -> None:
    code = (
        "import sys, oraclectl.main, oraclectl.envimport\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.startswith('oraclewad') and not m.startswith('oraclewad._proto'))\n"
        "assert bad == ['oraclewad'], bad\n"
    )
    result = await trio.run_process([sys.executable, "-c", code], capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()


async def test_purge_asks_on_a_terminal(control: Harness) -> None:
    import io

    from oraclectl.main import main

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    await control.add("keepme")
    await control.add("dropme")

    def run(tenant: str, answer: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        argv = ["--socket", str(control.socket), "tenant", "remove", tenant, "--purge"]
        code = main(argv, stdout=out, stderr=err, stdin=Terminal(answer + "\n"))
        return code, out.getvalue(), err.getvalue()

    code, out, err = await trio.to_thread.run_sync(run, "keepme", "no")
    assert code == 1 and "Type the tenant id to confirm" in err and "nothing removed" in err
    assert "keepme" in control.ops.tenants
    code, out, err = await trio.to_thread.run_sync(run, "dropme", "dropme")
    assert code == 0 and "tenant dropme removed and purged" in out
    assert "dropme" not in control.ops.tenants
