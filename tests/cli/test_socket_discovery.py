"""Where oraclectl looks for the daemon (issue 7 item 8): never a planted ./var/run socket."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from oraclectl.client import INSTALLED_SOCKET, resolve_socket
from tests.harness import BIN


@contextlib.contextmanager
def planted_socket(folder: Path) -> Iterator[list[int]]:
    """A listening ./var/run/oraclewad.sock that counts the connections it gets; its thread is
    joined on exit (closing a socket does not wake a thread blocked in accept())."""
    (folder / "var" / "run").mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "var" / "run" / "oraclewad.sock"))
    listener.listen(8)
    listener.settimeout(0.05)
    accepted: list[int] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield accepted
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()


def test_a_planted_socket_in_an_unrelated_folder_is_never_used(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OWA_SOCKET", "OWA_CONFIG")}
    with planted_socket(tmp_path) as accepted:
        result = subprocess.run([str(BIN / "oraclectl"), "status"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=30)
    assert accepted == []
    assert result.returncode == 3
    assert str(tmp_path) not in result.stderr
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert not resolve_socket(env={}).startswith(str(tmp_path))
        assert resolve_socket(env={}) == INSTALLED_SOCKET or os.path.isfile("/etc/oraclewa/oraclewad.toml")
    finally:
        os.chdir(cwd)


def test_the_socket_comes_from_flag_env_or_the_daemon_config(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "oraclewad.toml"
    config.parent.mkdir()
    config.write_text('[daemon]\nrun_dir = "../run"\n')
    expected = str(tmp_path / "etc" / ".." / "run" / "oraclewad.sock")
    assert resolve_socket(env={}, config=str(config)) == expected
    assert resolve_socket(env={"OWA_CONFIG": str(config)}) == expected
    assert resolve_socket(env={"OWA_SOCKET": "/x.sock", "OWA_CONFIG": str(config)}) == "/x.sock"
    config.write_text('[control]\nsocket = "/srv/owa.sock"\n')
    assert resolve_socket(env={}, config=str(config)) == "/srv/owa.sock"
    # a checkout (a folder with oraclewad.toml) is found as the daemon finds it
    (tmp_path / "oraclewad.toml").write_text("")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert resolve_socket(env={}) == str(tmp_path / "var" / "run" / "oraclewad.sock")
    finally:
        os.chdir(cwd)


def test_oraclectl_config_flag_reaches_the_daemon(make_daemon) -> None:
    daemon = make_daemon()
    daemon.start()
    result = subprocess.run([str(BIN / "oraclectl"), "--config", str(daemon.config), "status"],
                            cwd="/", capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([str(BIN / "oraclectl"), "--config", str(daemon.root / "nope.toml"), "status"],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
