"""Config and tenant files: every mistake is reported with file, key and fix; good tenants still run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from oraclewad.errors import AlreadyExists, InvalidArgument
from oraclewad.settings import find_config, load_settings
from oraclewad.tenants.ids import id_problem, resource_name
from oraclewad.tenants.loader import load_tenants
from oraclewad.tenants.ports import PortBook, ephemeral_overlap
from oraclewad.tenants.store import create_tenant_file, retire_tenant_file
from tests.harness import REPO, write_config, write_tenant

ORACLEWAD = [sys.executable, "-m", "oraclewad.cli"]


def test_the_repo_config_and_example_tenant_are_valid(tmp_path: Path) -> None:
    settings = load_settings(REPO / "oraclewad.toml")
    assert settings.state_dir == REPO / "var" / "state"  # relative to the config file, not the cwd
    assert settings.tenants_dir == REPO / "var" / "tenants.d"   # a copy: the tree stays clean
    assert settings.postgres.dsn is None and settings.redis.url is None  # embedded by default
    assert load_tenants(REPO / "tenants.d", settings.policy).tenants["imperio"].name == "Império Prêmios"
    # As `make check` sees it after seeding var/tenants.d (done here on a copy of the tree).
    shutil.copy(REPO / "oraclewad.toml", tmp_path)
    shutil.copytree(REPO / "tenants.d", tmp_path / "var" / "tenants.d")
    result = subprocess.run([*ORACLEWAD, "check", "--config", str(tmp_path / "oraclewad.toml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_make_run_seeds_var_tenants_d_once_and_leaves_the_example_alone(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copytree(REPO / "tenants.d", tmp_path / "tenants.d")
    subprocess.run(["make", "-s", "var/tenants.d"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "var" / "tenants.d" / "imperio.toml").read_bytes() == \
        (REPO / "tenants.d" / "imperio.toml").read_bytes()
    (tmp_path / "var" / "tenants.d" / "lojaABC.toml").write_text('id = "lojaABC"\n')  # tenant add
    subprocess.run(["make", "-s", "var/tenants.d"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "var" / "tenants.d" / "lojaABC.toml").exists()    # seeded once, never again
    assert sorted(p.name for p in (tmp_path / "tenants.d").iterdir()) == ["imperio.toml"]


def documented_keys(text: str) -> set[str]:
    """Every `key = value` of a TOML file, commented out or not, as `table.key`."""
    keys, table = set(), ""
    for raw in text.splitlines():
        line = raw.strip().removeprefix("#").strip()
        if line.startswith("[") and "]" in line:
            table = line[1:line.index("]")]
        elif "=" in line and line.split("=")[0].strip().replace("_", "").isalnum():
            keys.add(f"{table}.{line.split('=')[0].strip()}")
    return keys


def test_the_repo_config_lists_every_key_the_daemon_reads(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from oraclewad import tomlcheck

    read: set[str] = set()
    original = tomlcheck.TableReader.get

    def recording(self: tomlcheck.TableReader, name: str, *args: object, **kw: object) -> object:
        read.add(self.key(name))
        return original(self, name, *args, **kw)

    monkeypatch.setattr(tomlcheck.TableReader, "get", recording)
    text = (REPO / "oraclewad.toml").read_text()
    # Its commented-out examples (a host program, TLS, external servers) are read once uncommented.
    example = tmp_path / "oraclewad.toml"
    example.write_text("\n".join(line[2:] if line.startswith("# ") and ("=" in line or "[" in line)
                                 else line for line in text.splitlines()))
    with contextlib.suppress(InvalidArgument):   # only which keys are read matters here
        load_settings(example)
    assert {"metrics.listen", "programs.sandbox.command", "control.tcp"} <= read
    documented = documented_keys(text)
    # A per-program [programs.NAME.policy] takes any key of [policy].
    undocumented = {k for k in read - documented if f"policy.{k.rpartition('.')[2]}" not in documented
                    or ".policy." not in k}
    assert undocumented == set()


def test_config_errors_name_file_key_and_fix(tmp_path: Path) -> None:
    config = tmp_path / "oraclewad.toml"
    config.write_text('[daemon]\nstate_dir = 3\nbogus = 1\n[policy]\nbackoff_max = -1\n'
                      '[services]\nport_range = [5000, 4000]\n[control]\ntls_cert = "c.pem"\n')
    with pytest.raises(InvalidArgument) as err:
        load_settings(config)
    text = str(err.value)
    for expected in ("daemon.state_dir: must be a string", "daemon.bogus: unknown key",
                     "policy.backoff_max: must be greater than 0",
                     "services.port_range: must be [FIRST, LAST]",
                     "control.tls_cert: set both tls_cert and tls_key"):
        assert expected in text
    assert str(config) in text


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OWA_CONFIG", raising=False)
    assert find_config("x.toml") == Path("x.toml")
    (tmp_path / "oraclewad.toml").write_text("")
    assert find_config() == Path("oraclewad.toml")
    monkeypatch.setenv("OWA_CONFIG", "/elsewhere.toml")
    assert find_config() == Path("/elsewhere.toml")


@pytest.mark.parametrize("bad", ["", "1abc", "a b", 'a";drop', "x$(rm -rf)", "é", "a" * 41, "a/b", "../x"])
def test_bad_tenant_ids_are_refused(bad: str) -> None:
    assert id_problem(bad) is not None


def test_good_tenant_ids_and_derived_names() -> None:
    for good in ("lojaABC", "imperio", "a", "x-1_y", "a" * 40):
        assert id_problem(good) is None
    assert resource_name("lojaABC", "recovery") == "lojaabc_recovery"
    assert resource_name("my-shop", "broadcast") == "my_shop_broadcast"


def test_invalid_tenant_files_are_reported_and_skipped(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    write_tenant(tmp_path, "good")
    write_tenant(tmp_path, "lojaABC")
    (tmp_path / "tenants.d" / "LOJAabc.toml").write_text('id = "LOJAabc"\n')
    (tmp_path / "tenants.d" / "wrongname.toml").write_text('id = "other"\n')
    (tmp_path / "tenants.d" / "garbled.toml").write_text('id = "garbled\n')
    write_tenant(tmp_path, "badkeys", '[recovery]\nport = 70000\n[antiban]\nstrategy = "yolo"\n'
                 "delay_min = 50\ndelay_max = 10\n[evolution]\nurl = \"ftp://x\"\n")
    (tmp_path / "tenants.d" / ".editor-swap.toml").write_text("garbage")
    loaded = load_tenants(settings.tenants_dir, settings.policy)
    assert sorted(loaded.tenants) == ["LOJAabc", "good"]  # files load in name order; the first id wins
    text = "\n".join(str(p) for p in loaded.problems)
    assert "clashes with" in text
    assert "wrongname.toml: id: 'other' must match the file name" in text
    assert "garbled.toml: not valid TOML" in text
    assert "recovery.port: must be a TCP port" in text
    assert "antiban.strategy: unknown strategy 'yolo'" in text
    assert "antiban.delay_min: must not exceed delay_max" in text
    assert "evolution.url: must start with http://" in text
    result = subprocess.run([*ORACLEWAD, "check", "--config", str(settings.path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "problem(s) found" in result.stderr and "badkeys.toml" in result.stderr


def test_unknown_keys_in_every_tenant_table_are_problems_with_a_suggestion(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    write_tenant(tmp_path, "typos", 'relase = "2.0"\n[recovery]\nprot = 4101\n[recovery.policy]\n'
                 "start_timout = 5.0\n[evolution]\ninstance = []\n[antiban]\nstratgy = \"moderate\"\n"
                 "foo = 1\n[antiban.warmup.day1]\nmin = 1\nmaxx = 2\n[antiban.working_hours]\n"
                 'start = "08:00"\nzone = "UTC"\n[templates]\nreminder = "Oi {name}"\n')
    loaded = load_tenants(settings.tenants_dir, settings.policy)
    assert "typos" not in loaded.tenants
    text = "\n".join(str(p) for p in loaded.problems)
    for expected in ("relase: unknown key: did you mean 'release'?",
                     "recovery.prot: unknown key: did you mean 'port'?",
                     "recovery.policy.start_timout: unknown key: did you mean 'start_timeout'?",
                     "evolution.instance: unknown key: did you mean 'instances'?",
                     "antiban.stratgy: unknown key: did you mean 'strategy'?",
                     "antiban.foo: unknown key: remove it or check its spelling",
                     "antiban.warmup.day1.maxx: unknown key: did you mean 'max'?",
                     "antiban.working_hours.zone: unknown key"):
        assert expected in text
    assert "templates" not in text  # template names are the operator's own
    assert len(loaded.problems) == 8  # each reported once
    result = subprocess.run([*ORACLEWAD, "check", "--config", str(settings.path)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "antiban.stratgy: unknown key" in result.stderr


def test_config_unknown_keys_suggest_the_close_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="[logs]\nbackup = 3\n")
    with pytest.raises(InvalidArgument, match=r"logs\.backup: unknown key: did you mean 'backups'"):
        load_settings(config)


def test_allocated_ports_are_stable_and_never_shared(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    first = settings.port_range[0]
    write_tenant(tmp_path, "a", f"[recovery]\nport = {first + 1}\n")
    write_tenant(tmp_path, "b")
    book_path = settings.state_dir / "ports.json"
    loaded = load_tenants(settings.tenants_dir, settings.policy)
    ports, problems = PortBook(book_path, settings.port_range, "127.0.0.1").assign(loaded.tenants)
    assert not problems
    assert ports["a/recovery"] == first + 1
    assert len(set(ports.values())) == 4
    assert json.loads(book_path.read_text()) == ports   # explicit ports are remembered too
    # A restart (a new book read from disk) gives the same ports; the tenant file is untouched.
    before = (tmp_path / "tenants.d" / "b.toml").read_text()
    again, _ = PortBook(book_path, settings.port_range, "127.0.0.1").assign(loaded.tenants)
    assert again == ports
    assert (tmp_path / "tenants.d" / "b.toml").read_text() == before


def test_explicit_port_clash_rejects_only_the_second_tenant(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    port = settings.port_range[0] + 5
    write_tenant(tmp_path, "a", f"[recovery]\nport = {port}\n")
    write_tenant(tmp_path, "b", f"[broadcast]\nport = {port}\n")
    loaded = load_tenants(settings.tenants_dir, settings.policy)
    ports, problems = PortBook(settings.state_dir / "p.json", settings.port_range, "127.0.0.1").assign(
        loaded.tenants)
    assert "a/recovery" in ports and "b/recovery" not in ports
    assert f"port {port} belongs to a/recovery" in str(problems[0])


def test_a_remembered_port_belongs_to_its_service_even_against_an_explicit_claim(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    write_tenant(tmp_path, "old")
    book_path = settings.state_dir / "ports.json"
    first, _ = PortBook(book_path, settings.port_range, "127.0.0.1").assign(
        load_tenants(settings.tenants_dir, settings.policy).tenants)
    (tmp_path / "tenants.d" / "old.toml").unlink()   # removed, data kept: its ports stay its own
    write_tenant(tmp_path, "new", f"[recovery]\nport = {first['old/recovery']}\n")
    ports, problems = PortBook(book_path, settings.port_range, "127.0.0.1").assign(
        load_tenants(settings.tenants_dir, settings.policy).tenants)
    assert "new/recovery" not in ports
    assert f"new.toml: recovery.port: port {first['old/recovery']} belongs to old/recovery " \
           "(remembered in ports.json)" in str(problems[0])
    assert json.loads(book_path.read_text())["old/recovery"] == first["old/recovery"]


def test_a_removed_tenant_with_kept_data_keeps_its_id_against_another_spelling(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    write_tenant(tmp_path, "IMPERIO")
    loaded = load_tenants(settings.tenants_dir, settings.policy, incumbents={"imperio"})
    assert loaded.tenants == {}
    assert "'IMPERIO' is the removed tenant 'imperio' spelled differently" in str(loaded.problems[0])
    assert "tenant restore imperio" in str(loaded.problems[0])


def test_an_id_already_held_wins_over_a_file_that_sorts_first(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    write_tenant(tmp_path, "imperio")
    write_tenant(tmp_path, "IMPERIO")   # "I" sorts before "i"
    loaded = load_tenants(settings.tenants_dir, settings.policy, incumbents={"imperio"})
    assert list(loaded.tenants) == ["imperio"]
    assert [p.source for p in loaded.problems] == [str(tmp_path / "tenants.d" / "IMPERIO.toml")]
    assert "clashes with 'imperio' in imperio.toml, which holds that id already" in str(loaded.problems[0])


def test_allocation_skips_ports_other_programs_hold(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", settings.port_range[0]))
        busy.listen()
        write_tenant(tmp_path, "a")
        loaded = load_tenants(settings.tenants_dir, settings.policy)
        ports, _ = PortBook(settings.state_dir / "p.json", settings.port_range, "127.0.0.1").assign(
            loaded.tenants)
    assert settings.port_range[0] not in ports.values()


def test_tenant_files_are_created_exclusively_and_retired_not_deleted(tmp_path: Path) -> None:
    tenants_dir = tmp_path / "tenants.d"
    path = create_tenant_file(tenants_dir, {"id": "lojaABC", "name": "Loja"})
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(AlreadyExists, match=r"tenant 'lojaABC' already exists .* so 'LOJAabc' is taken"):
        create_tenant_file(tenants_dir, {"id": "LOJAabc"})
    moved = retire_tenant_file(tenants_dir, "lojaABC")
    assert moved.parent.name == ".removed" and 'id = "lojaABC"' in moved.read_text()
    assert not path.exists()
    assert not [p for p in tenants_dir.iterdir() if p.name.endswith(".tmp")]


def test_check_exits_non_zero_on_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "oraclewad.toml"
    config.write_text("[daemon\n")
    result = subprocess.run([*ORACLEWAD, "check", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 1 and "not valid TOML" in result.stderr
    missing = subprocess.run([*ORACLEWAD, "check", "--config", str(tmp_path / "nope.toml")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "file not found" in missing.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    unit = (REPO / "systemd" / "oraclewad.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's installed script.
    unit = unit.replace("/opt/oraclewa/.venv/bin/oraclewad", str(Path(sys.executable).parent / "oraclewad"))
    target = tmp_path / "oraclewad.service"
    target.write_text(unit)
    result = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "KillMode=mixed",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "User=oraclewa"):
        assert line in unit


def test_a_port_range_inside_the_ephemeral_ports_is_warned_about(tmp_path: Path) -> None:
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768\t60999\n")
    assert ephemeral_overlap((4100, 4999), proc) is None
    warning = ephemeral_overlap((30000, 40000), proc)
    assert warning is not None and "pick a range below 32768" in warning
