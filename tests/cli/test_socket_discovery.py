"""Where oraclectl looks for the daemon (issue 7 item 8): never a planted ./var/run socket."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from oraclectl.client import INSTALLED_SOCKET, resolve_socket
from tests.harness import BIN


def plant_socket(folder: Path) -> tuple[socket.socket, list[int]]:
    """A listening ./var/run/oraclewad.sock that counts the connections it gets."""
    (folder / "var" / "run").mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "var" / "run" / "oraclewad.sock"))
    listener.listen(8)
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, accepted


def test_a_planted_socket_in_an_unrelated_folder_is_never_used(tmp_path: Path) -> None:
    listener, accepted = plant_socket(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("OWA_SOCKET", "OWA_CONFIG")}
    try:
        result = subprocess.run([str(BIN / "oraclectl"), "status"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=30)
    finally:
        listener.close()
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
