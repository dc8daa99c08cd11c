"""`oraclectl top` in a real terminal: tmux runs it, the test reads the screen and types keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BIN, wait_for
from tests.metrics.conftest import MetricsDaemon


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed (Debian package `tmux`)")
    # The size from the config: `new-session -x` alone is not honoured when tmux has no terminal.
    conf = tmp_path / "tmux.conf"
    conf.write_text("set -g default-size 150x30\n")
    base = ["tmux", "-L", f"owa-top-{os.getpid()}", "-f", str(conf)]
    try:
        yield base
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=10)


def screen(tmux: list[str]) -> str:
    result = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                            timeout=10)
    return result.stdout


# Runs top as the terminal's program and writes its exit code to a file. SIGINT is ignored by
# this wrapper only (top gets the default back), so Ctrl-C reaches top alone, as in a shell.
WRAPPER = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
code = subprocess.run(sys.argv[2:], preexec_fn=default_sigint).returncode
open(sys.argv[1], "w").write(str(code))
print(f"top exited with {code}", flush=True)
signal.pause()
"""


@pytest.mark.parametrize("quit_key", ["q", "C-c"])
def test_top_shows_every_tenant_sorts_and_quits_cleanly(metrics_daemon: MetricsDaemon, tmux: list[str],
                                                        tmp_path: Path, quit_key: str) -> None:
    md = metrics_daemon
    top = [str(BIN / "oraclectl"), "--socket", str(md.daemon.socket_path), "top", "--interval", "0.5"]
    status_file = tmp_path / "exit"
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "env", "TERM=xterm-256color", sys.executable,
                    "-c", WRAPPER, str(status_file), *top], check=True, timeout=10)

    def rows() -> dict[tuple[str, str], list[str]]:
        found = {}
        for line in screen(tmux).splitlines():
            parts = line.split()
            if len(parts) >= 10 and parts[1] in ("recovery", "broadcast"):
                found[(parts[0], parts[1])] = parts
        return found

    wanted = {(t, s) for t in ("imperio", md.other) for s in ("recovery", "broadcast")}
    try:
        wait_for(lambda: set(rows()) >= wanted, timeout=30, what=f"top showing {wanted}")
    except AssertionError as e:
        raise AssertionError(f"{e}; the screen:\n{screen(tmux)}") from None
    text = screen(tmux)
    assert "TENANT" in text and "CPU%" in text and "MSG/MIN" in text and "sort: tenant" in text
    # The second refresh has a CPU rate; the memory column carries its unit.
    wait_for(lambda: all(r[4] != "-" for r in rows().values()), timeout=30, what="CPU% after a refresh")
    assert all(r[2] == "running" and r[5].endswith("MiB") for r in rows().values())

    subprocess.run([*tmux, "send-keys", "-t", "top", "m"], check=True, timeout=10)
    wait_for(lambda: "sort: memory" in screen(tmux), timeout=10, what="sorted by memory")
    subprocess.run([*tmux, "send-keys", "-t", "top", "m"], check=True, timeout=10)
    wait_for(lambda: "sort: memory (reversed)" in screen(tmux), timeout=10, what="sort reversed")

    subprocess.run([*tmux, "send-keys", "-t", "top", quit_key], check=True, timeout=10)
    status = wait_for(lambda: status_file.exists() and status_file.read_text(), timeout=30,
                      what="top to exit")
    assert status == "0"
    # curses gave the terminal back: the screen is the shell's again, not top's.
    wait_for(lambda: "top exited with 0" in screen(tmux), timeout=10, what="the terminal back")
    assert "TENANT" not in screen(tmux)

def test_top_refuses_without_a_terminal(metrics_daemon: MetricsDaemon) -> None:
    result = metrics_daemon.daemon.ctl("top", check=False)
    assert result.returncode == 2 and "needs a terminal" in result.stderr
