"""Hostile files in tenants.d: each is that file's problem only (issue 7, items 1-3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.faults.helpers import ready_pids
from tests.harness import BIN, ctl_in_process, unique_id, wait_for, write_tenant

NESTED = "a = " + "[" * 5000 + "]" * 5000 + "\n"


def plant(tenants_dir: Path) -> dict[str, str]:
    """One file of each kind; returns {file name: what its problem must say}."""
    (tenants_dir / "nested.toml").write_text('id = "nested"\n' + NESTED)
    os.mkfifo(tenants_dir / "fifo.toml")
    with open(tenants_dir / "huge.toml", "wb") as f:
        f.write(b'id = "huge"\nname = "')
        f.truncate(3 * 1024 * 1024)
    (tenants_dir / "binary.toml").write_bytes(b'id = "binary"\n\x00\x01\x02\xff\xfe')
    target = tenants_dir.parent / "elsewhere.toml"
    target.write_text('id = "linked"\n')
    (tenants_dir / "linked.toml").symlink_to(target)
    return {"nested.toml": "nests", "fifo.toml": "FIFO", "huge.toml": "bytes",
            "binary.toml": "binary", "linked.toml": "symbolic link"}


def invalid_rows(daemon) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = daemon.ctl_json("status")
    return {r["tenant"]: r["message"] for r in rows if r["state"] == "invalid"}


def with_a_good_tenant(make_daemon):  # type: ignore[no-untyped-def]
    """A started daemon with one tenant whose services are ready: (daemon, its id, their pids)."""
    daemon = make_daemon()
    good = unique_id()
    write_tenant(daemon.root, good)
    daemon.start()
    return daemon, good, wait_for(lambda: ready_pids(daemon, [good]), what="the good tenant ready")


def oraclewad_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "oraclewad"), "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_hostile_tenant_files_are_reported_and_nobody_else_moves(make_daemon) -> None:
    daemon, good, before = with_a_good_tenant(make_daemon)
    expected = plant(daemon.root / "tenants.d")

    started = time.monotonic()
    reload = daemon.ctl("reload", check=False, timeout=30)
    assert time.monotonic() - started < 20, "the reload must not block on the FIFO"
    assert "INTERNAL" not in reload.stderr and "Traceback" not in reload.stderr
    shown = invalid_rows(daemon)
    for name, words in expected.items():
        assert words in shown[Path(name).stem], (name, shown)
    assert ready_pids(daemon, [good]) == before

    daemon.signal(signal.SIGHUP)
    time.sleep(1.0)
    assert daemon.proc.poll() is None, daemon.stderr()[-3000:]
    assert ready_pids(daemon, [good]) == before

    # tenant add still works with the FIFO present (it used to hang until someone opened it)
    other = unique_id()
    daemon.ctl("tenant", "add", other, "--services", "all", timeout=60)
    assert ready_pids(daemon, [good]) == before

    check = oraclewad_check(daemon.config)
    assert check.returncode == 1
    assert "Traceback" not in check.stderr
    for name in expected:
        assert name in check.stderr

    # The daemon also starts with the files present.
    assert daemon.stop() == 0
    daemon.start()
    wait_for(lambda: ready_pids(daemon, [good, other]), what="both tenants back after a restart")
    assert set(expected) <= {f"{k}.toml" for k in invalid_rows(daemon)}


def test_a_symlink_is_followed_only_when_the_operator_allows_it(tmp_path: Path) -> None:
    from oraclewad.settings import load_settings
    from oraclewad.tenants.loader import load_tenants

    tenants = tmp_path / "tenants.d"
    tenants.mkdir()
    (tmp_path / "real.toml").write_text('id = "linked"\n')
    (tenants / "linked.toml").symlink_to(tmp_path / "real.toml")
    (tenants / "dangling.toml").symlink_to(tmp_path / "missing.toml")
    for allowed in (False, True):
        (tmp_path / "oraclewad.toml").write_text(f"[daemon]\ntenant_symlinks = {str(allowed).lower()}\n")
        settings = load_settings(tmp_path / "oraclewad.toml")
        loaded = load_tenants(settings.tenants_dir, settings.policy, follow_symlinks=settings.tenant_symlinks)
        assert ("linked" in loaded.tenants) is allowed
        assert any("dangling" in p.source for p in loaded.problems)


def test_strings_from_outside_have_limits_and_no_control_characters(tmp_path: Path) -> None:
    from oraclewad.settings import Policy
    from oraclewad.tenants.loader import load_tenant_file

    cases = {
        "longname": 'name = "' + "x" * 3_000_000 + '"\n',
        "escname": 'name = "Loja \\u001b[31mRED"\n',
        "nlname": 'name = "two\\nlines"\n',
        "instances": "[evolution]\ninstances = [" + ", ".join(f'"i{i}"' for i in range(5000)) + "]\n",
    }
    for tenant_id, body in cases.items():
        path = tmp_path / f"{tenant_id}.toml"
        path.write_text(f'id = "{tenant_id}"\n{body}')
        problems: list = []
        assert load_tenant_file(path, Policy(), problems) is None, tenant_id
        assert problems and all(len(str(p)) < 500 for p in problems), problems
    path = tmp_path / "fine.toml"
    path.write_text('id = "fine"\nname = "Loja Boa"\n[templates]\nthanks = "Obrigado!\\nVolte sempre"\n')
    problems = []
    assert load_tenant_file(path, Policy(), problems) is not None, problems


def test_requests_with_oversized_strings_are_invalid_argument(make_daemon) -> None:
    daemon, good, before = with_a_good_tenant(make_daemon)
    code, _, err = ctl_in_process(daemon.socket_path, "tenant", "add", unique_id(), "--name", "N" * 3_000_000)
    assert code == 1 and "at most" in err and len(err) < 1000, err[:2000]
    sock = daemon.socket_path
    code, _, err = ctl_in_process(sock, "tenant", "add", unique_id(), "--name", "evil\x1b[2Jname")
    assert code == 1 and "control character" in err, err
    for channel in ("c" * 5000, "c" * 300):
        code, _, err = ctl_in_process(daemon.socket_path, "logs", good, "recovery", "--channel", channel)
        assert code == 1, err
        assert "internal" not in err.lower() and "at most" in err, err
    assert ready_pids(daemon, [good]) == before
    assert daemon.proc.poll() is None



def test_answers_about_thousands_of_invalid_files_stay_under_the_message_limit(make_daemon) -> None:
    """1500 invalid files of 20 long-but-legal problems each (about 9 MB of status rows) and one
    with 20000: reload, status and health answer in full, in pages each under gRPC's 4 MiB."""
    daemon = make_daemon()
    tenants_dir = daemon.root / "tenants.d"
    tenants_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1500):
        keys = "".join(f"{'k' * 230}{i:02d} = 1\n" for i in range(20))
        (tenants_dir / f"bad{n:04d}.toml").write_text(f'id = "bad{n:04d}"\n{keys}')
    many = "".join(f"k{i:06d} = 1\n" for i in range(20000))
    (tenants_dir / "many.toml").write_text(f'id = "many"\n{many}')
    daemon.start()

    reload = daemon.ctl("--json", "reload", check=False, timeout=120)
    assert reload.returncode == 1, reload.stderr    # problems found: the operator's to fix
    problems = json.loads(reload.stdout)["problems"]
    assert 0 < len(problems) <= 201 and "more lines about 1501 files" in problems[-1]
    rows = {r["tenant"]: r for r in daemon.ctl_json("status") if r["state"] == "invalid"}
    assert set(rows) == {f"bad{n:04d}" for n in range(1500)} | {"many"}
    assert rows["bad1499"]["message"].count("unknown key") == 20
    lines = rows["many"]["message"].splitlines()
    assert len(lines) == 21 and "19980 more problems" in lines[-1] and "oraclewad check" in lines[-1]
    result = daemon.ctl("status", timeout=120)
    assert "bad1499" in result.stdout and "RESOURCE_EXHAUSTED" not in result.stderr
    health = daemon.ctl("--json", "health", check=False, timeout=120)
    assert health.returncode == 1 and len(json.loads(health.stdout)) == 1501, health.stderr
