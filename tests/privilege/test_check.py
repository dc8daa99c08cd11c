"""Check errors for secret files a tenant names, and warnings for servers open to a rogue tenant."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from oraclewad.provision.audit import transport_warnings
from oraclewad.settings import load_settings
from tests.harness import BIN


def write(root: Path, servers: str = "") -> Path:
    (root / "tenants.d").mkdir(parents=True, exist_ok=True)
    config = root / "oraclewad.toml"
    config.write_text(f'[daemon]\nstate_dir = "state"\n[metrics]\nlisten = ""\n{servers}')
    return config


def tenant_with_key(root: Path, key_file: Path, tenant: str = "acme") -> None:
    (root / "tenants.d" / f"{tenant}.toml").write_text(
        f'id = "{tenant}"\nname = "{tenant}"\nservices = "all"\n'
        f'[evolution]\nurl = "http://127.0.0.1:8080"\napi_key_file = "{key_file}"\n')


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "oraclewad"), "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def secret(path: Path, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("key\n")
    os.chmod(path, mode)
    return path


def test_a_private_key_file_passes(tmp_path: Path) -> None:
    config = write(tmp_path)
    tenant_with_key(tmp_path, secret(tmp_path / "keys" / "acme.key"))
    result = check(config)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", ["group-readable", "symlink", "fifo", "other-tenants-secrets",
                                  "state-folder", "foreign-owner"])
def test_a_key_file_that_is_not_private_is_an_error(tmp_path: Path, case: str) -> None:
    config = write(tmp_path)
    keys = tmp_path / "keys"
    if case == "group-readable":
        path, expect = secret(keys / "k", 0o640), "is mode 0640: chmod 600"
    elif case == "symlink":
        (keys).mkdir()
        path, expect = keys / "link", "is a symlink"
        path.symlink_to(secret(keys / "real"))
    elif case == "fifo":
        keys.mkdir()
        path, expect = keys / "fifo", "is not a regular file"
        os.mkfifo(path, 0o600)
    elif case == "other-tenants-secrets":
        # What a control-plane request once did: point at another tenant's credentials.
        path = secret(tmp_path / "state" / "secrets" / "victim.toml")
        expect = "inside the daemon's state folder"
    elif case == "state-folder":
        path, expect = secret(tmp_path / "state" / "stray.key"), "inside the daemon's state folder"
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        path, expect = secret(keys / "k"), "belongs to uid 4242"
        os.chown(path, 4242, 4242)
    tenant_with_key(tmp_path, path)
    result = check(config)
    assert result.returncode == 1
    assert "evolution.api_key_file" in result.stderr and expect in result.stderr, result.stderr


def test_the_daemons_own_key_file_for_the_tenant_is_allowed(tmp_path: Path) -> None:
    config = write(tmp_path)
    tenant_with_key(tmp_path, secret(tmp_path / "state" / "secrets" / "acme.evolution.key"))
    assert check(config).returncode == 0


def test_open_servers_are_warned_about_with_the_fix(tmp_path: Path, backend: str) -> None:
    if backend != "external":
        pytest.skip("needs the machine's PostgreSQL and Redis (trust, default user open)")
    config = write(tmp_path, '[postgres]\ndsn = "postgresql://postgres@127.0.0.1:5432/postgres"\n'
                             '[redis]\nurl = "redis://127.0.0.1:6379/0"\n')
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert "lets roles log in without a password (pg_hba.conf `trust`)" in result.stderr
    assert "use scram-sha-256" in result.stderr
    assert "REVOKE CONNECT ON DATABASE postgres, template1 FROM PUBLIC" in result.stderr
    assert "the `default` user with every command and no password" in result.stderr
    assert "ACL SETUSER default off" in result.stderr
    assert "without TLS" not in result.stderr          # loopback: nothing crosses a network


def test_embedded_servers_raise_no_warning(tmp_path: Path) -> None:
    result = check(write(tmp_path))
    assert "warning" not in result.stderr, result.stderr


def test_tls_off_to_a_remote_server_is_warned_about(tmp_path: Path) -> None:
    # From the config alone: nothing connects to the (made-up) remote hosts.
    config = write(tmp_path, '[postgres]\ndsn = "postgresql://owa@db.example.com:5432/postgres"\n'
                             '[redis]\nurl = "redis://cache.example.com:6379/0"\n')
    found = transport_warnings(load_settings(config))
    assert len(found) == 2
    assert "PostgreSQL at db.example.com:5432 is reached without TLS" in found[0]
    assert "sslmode=verify-full" in found[0]
    assert "Redis at cache.example.com:6379 is reached without TLS" in found[1] and "rediss://" in found[1]
    config = write(tmp_path, '[postgres]\ndsn = "postgresql://owa@db.example.com/postgres?sslmode=verify-full"\n'
                             '[redis]\nurl = "rediss://cache.example.com:6379/0"\n')
    assert transport_warnings(load_settings(config)) == []
