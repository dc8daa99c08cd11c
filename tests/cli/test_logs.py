"""`oraclectl logs` as an operator reads it: readable lines, filters, every tenant, -f across rotation."""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from oraclectl.main import parse_since
from tests.harness import REPO, Daemon, ctl_in_process, running_daemon, unique_id, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Daemon]:
    """Log files rotate every few KiB here, so a few dozen requests rotate them several times."""
    with running_daemon(tmp_path_factory.mktemp("logs"), backend=backend,
                        extra="[logs]\nmax_bytes = 4096\nbackups = 50\n") as daemon:
        yield daemon


def ctl(daemon: Daemon, *argv: str) -> tuple[int, str, str]:
    return ctl_in_process(daemon.socket_path, *argv)


@pytest.fixture(scope="module")
def tenants(daemon: Daemon) -> tuple[str, str]:
    a, b = unique_id("loga"), unique_id("logb")
    for tid in (a, b):
        code, _, err = ctl(daemon, "tenant", "add", tid, "--timeout", "90")
        assert code == 0, err
    return a, b


def port(daemon: Daemon, tid: str, service: str = "recovery") -> int:
    return json.loads(ctl(daemon, "--json", "tenant", "show", tid)[1])["ports"][service]


def every_record(folder: Path, name: str = "combined.log") -> list[dict[str, object]]:
    """The records of a log file and all its gzip'd backups, oldest first."""
    backups = sorted(folder.glob(f"{name}.*.gz"), key=lambda p: -int(p.name.split(".")[2]))
    texts = [gzip.decompress(p.read_bytes()).decode() for p in backups]
    texts.append((folder / name).read_text())
    return [json.loads(line) for text in texts for line in text.splitlines() if line.startswith("{")]


def test_readable_lines_json_records_level_and_since(daemon: Daemon, tenants: tuple[str, str]) -> None:
    a, _ = tenants
    httpx.get(f"http://127.0.0.1:{port(daemon, a)}/nowhere")
    code, out, err = ctl(daemon, "logs", a, "recovery", "--channel", "http", "-n", "1")
    assert code == 0, err
    # 2026-12-01 10:02:11.772 INFO    http      request  method=GET path=/nowhere route=<unmatched> ...
    line = out.splitlines()[-1]
    assert line[:4].isdigit() and line[10] == " " and not line.startswith("{")
    assert " INFO    http      request  " in line and "path=/nowhere" in line and "status=404" in line
    code, out, _ = ctl(daemon, "--json", "logs", a, "recovery", "--channel", "http", "-n", "1")
    record = json.loads(out)
    assert record["path"] == "/nowhere" and record["tenant"] == a and record["ts"].endswith("Z")

    log = daemon.root / "log" / a / "recovery" / "combined.log"
    with log.open("a") as f:   # as a child would write them
        f.write(json.dumps({"ts": "2020-01-01T00:00:00.000Z", "level": "error", "channel": "runtime",
                            "msg": "old trouble"}) + "\n")
        f.write("Traceback (most recent call last):\n")
        f.write(json.dumps({"ts": "2999-01-01T00:00:00.000Z", "level": "warning", "channel": "runtime",
                            "msg": "future worry"}) + "\n")
        f.write(json.dumps({"ts": "2999-01-01T00:00:01.000Z", "level": "info", "channel": "runtime",
                            "msg": "future calm"}) + "\n")
    code, out, _ = ctl(daemon, "logs", a, "recovery", "--level", "warning", "-n", "3")
    assert out.splitlines() == [
        "2020-01-01 00:00:00.000 ERROR   runtime   old trouble",
        "Traceback (most recent call last):",                       # raw stderr counts as an error
        "2999-01-01 00:00:00.000 WARNING runtime   future worry"]
    code, out, _ = ctl(daemon, "logs", a, "recovery", "--since", "10m", "-n", "100")
    assert "old trouble" not in out and "Traceback" not in out   # the traceback goes with its record
    assert "future worry" in out and "future calm" in out
    code, _, err = ctl(daemon, "logs", a, "--since", "yesterday")
    assert code == 2 and "--since 'yesterday'" in err
    assert abs(parse_since("10m", now=1000.0) - 400.0) < 1e-9 and parse_since("1d", now=86400.0) == 0.0


def test_every_tenant_at_once_with_prefixes(daemon: Daemon, tenants: tuple[str, str]) -> None:
    code, out, err = ctl(daemon, "logs", "-n", "2")
    assert code == 0, err
    prefixes = {line.split(" | ", 1)[0].strip() for line in out.splitlines()}
    assert {f"{t}/{s}" for t in tenants for s in ("recovery", "broadcast")} <= prefixes


def test_follow_keeps_going_across_rotation(daemon: Daemon, tenants: tuple[str, str]) -> None:
    _, b = tenants
    folder = daemon.root / "log" / b / "recovery"
    argv = ["--socket", str(daemon.socket_path), "--json", "logs", b, "recovery", "--channel", "http",
            "-n", "0", "-f"]
    proc = subprocess.Popen([sys.executable, "-m", "oraclectl", *argv], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen: list[dict[str, object]] = []
    buf = b""

    def read() -> None:
        nonlocal buf
        while True:
            try:
                chunk = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            except BlockingIOError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            seen.extend(json.loads(line) for line in lines if line)

    try:
        url = f"http://127.0.0.1:{port(daemon, b)}"
        with httpx.Client() as client:
            # Until the follower is attached (its start-up is slow on a busy machine).
            wait_for(lambda: client.get(f"{url}/hello") and (read() or any(
                r.get("path") == "/hello" for r in seen)), timeout=60, interval=0.3, what="the follower")
            for i in range(60):
                client.get(f"{url}/p{i}")
        wait_for(lambda: read() or any(r.get("path") == "/p59" for r in seen), timeout=30,
                 what="the last request to be followed")
    finally:
        proc.terminate()
        proc.wait()
    assert len(list(folder.glob("http.log.*.gz"))) >= 3      # the file rotated several times meanwhile
    written = [r["path"] for r in every_record(folder, "http.log") if str(r.get("path", "")).startswith("/p")]
    followed = [r["path"] for r in seen if str(r.get("path", "")).startswith("/p")]
    assert written == [f"/p{i}" for i in range(60)]
    assert followed == written   # nothing lost or repeated at a rotation


def test_the_readme_and_help_name_the_log_files_a_run_writes(daemon: Daemon,
                                                             tenants: tuple[str, str]) -> None:
    a, _ = tenants
    httpx.get(f"http://127.0.0.1:{port(daemon, a)}/")
    folder = daemon.root / "log" / a / "recovery"
    wait_for(lambda: (folder / "http.log").exists(), what="http.log")
    readme = (REPO / "README.md").read_text()
    help_text = subprocess.run([sys.executable, "-m", "oraclectl", "logs", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for log in folder.glob("*.log"):
        assert f"{log.name} " in readme, log.name
        assert log.stem in help_text, log.stem
    for name in ("combined", "runtime", "http", "error"):
        assert name in help_text
    assert "../" not in readme and "/work/" not in readme   # the README stays inside the repo


def test_stop_start_restart_all_and_status_watch(daemon: Daemon, tenants: tuple[str, str]) -> None:
    def pids() -> dict[str, int]:
        rows = json.loads(ctl(daemon, "--json", "status")[1])
        return {f"{r['tenant']}/{r['service']}": r["pid"] for r in rows if r["service"]}

    before = pids()
    code, out, err = ctl(daemon, "stop", "--all")
    assert code == 0, err
    assert out.count(" stopped ") == len(before) == 4
    code, out, err = ctl(daemon, "start", "--all")
    assert code == 0 and out.count(" running ") == 4, err
    started = pids()
    code, out, err = ctl(daemon, "restart", "--all")
    assert code == 0 and out.count(" running ") == 4, err
    assert all(pid != started[name] for name, pid in pids().items())
    code, _, err = ctl(daemon, "stop")
    assert code == 2 and "--all" in err

    argv = ["--socket", str(daemon.socket_path), "status", "--watch", "0.2"]
    proc = subprocess.Popen([sys.executable, "-m", "oraclectl", *argv], stdout=subprocess.PIPE)
    # Ctrl-C once two screens are out (a fixed 3 s could end a slow start still importing, or
    # before the second screen, on a loaded machine).
    shown = b""
    deadline = time.monotonic() + 30
    while shown.count(b"TENANT ") < 2 and time.monotonic() < deadline:   # each screen's table
        if select.select([proc.stdout], [], [], 0.5)[0]:
            shown += os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
    proc.send_signal(signal.SIGINT)
    out = (shown + proc.communicate(timeout=30)[0]).decode()
    assert proc.returncode == 0
    assert out.count("every 0.2s: oraclectl status") >= 2 and out.count("TENANT ") >= 2
