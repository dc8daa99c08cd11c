"""`oraclectl top` in a real terminal: tmux runs it, the test reads the screen and types keys."""

from __future__ import annotations

import os
import shutil
import subprocess
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
    # remain-on-exit: the pane outlives top, so the test can read how it exited.
    conf.write_text("set -g default-size 150x30\nset -g remain-on-exit on\n")
    base = ["tmux", "-L", f"owa-top-{os.getpid()}", "-f", str(conf)]
    try:
        yield base
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=10)


def screen(tmux: list[str]) -> str:
    result = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                            timeout=10)
    return result.stdout


def exit_status(tmux: list[str]) -> str | None:
    """top's exit status once it has exited, else None."""
    result = subprocess.run([*tmux, "display", "-p", "-t", "top", "#{pane_dead} #{pane_dead_status}"],
                            capture_output=True, text=True, timeout=10)
    dead, _, status = result.stdout.strip().partition(" ")
    return status if dead == "1" else None


@pytest.mark.parametrize("quit_key", ["q", "C-c"])
def test_top_shows_every_tenant_sorts_and_quits_cleanly(metrics_daemon: MetricsDaemon, tmux: list[str],
                                                        tmp_path: Path, quit_key: str) -> None:
    md = metrics_daemon
    top = [str(BIN / "oraclectl"), "--socket", str(md.daemon.socket_path), "top", "--interval", "0.5"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "env", "TERM=xterm-256color", *top],
                   check=True, timeout=10)

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
    assert wait_for(lambda: exit_status(tmux), timeout=30, what="top to exit") == "0"
    # curses gave the terminal back: the last screen is not top's any more (the alternate
    # screen is gone), and the pane says how the program ended.
    assert "TENANT" not in screen(tmux).split("Pane is dead")[0]

def test_top_refuses_without_a_terminal(metrics_daemon: MetricsDaemon) -> None:
    result = metrics_daemon.daemon.ctl("top", check=False)
    assert result.returncode == 2 and "needs a terminal" in result.stderr
