"""Per-tenant credentials in `state_dir/secrets/<tenant>.toml` (file 0600, directory 0700).

One table per service:

    [recovery]
    database = "imperio_recovery"
    role = "imperio_recovery"
    password = "..."
    redis_username = "imperio_recovery"
    redis_password = "..."
    key_prefix = "imperio:recovery:"

Writes are atomic (temp file + fsync + rename), so a crash leaves the old or the new file.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

from oraclewad.files import write_atomic
from oraclewad.provision.embedded import ensure_private_dir
from oraclewad.provision.names import tenant_key

log = logging.getLogger("oraclewad.provision")


@dataclass(frozen=True)
class ServiceSecrets:
    database: str
    role: str
    password: str = field(repr=False)
    redis_username: str
    redis_password: str = field(repr=False)
    key_prefix: str


class SecretStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, tenant_id: str) -> Path:
        return self.directory / f"{tenant_key(tenant_id)}.toml"

    def load(self, tenant_id: str) -> dict[str, dict[str, str]]:
        """The raw tables (possibly incomplete: the caller fills gaps); {} when there is no file.

        An unparsable file is moved aside (`<name>.corrupt-<time>`) and treated as missing, so
        provisioning regenerates the passwords and resets the roles instead of failing forever.
        """
        path = self.path(tenant_id)
        ensure_private_dir(self.directory)
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("secrets file %s was readable by others (mode %o); set to 0600",
                        path, stat.S_IMODE(st.st_mode))
            os.chmod(path, 0o600)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            # The parser's message may quote file content (a password): log only the location.
            log.warning("secrets file %s is unreadable; moved to %s, new passwords will be generated",
                        path, aside)
            return {}
        return {svc: {k: v for k, v in table.items() if isinstance(v, str)}
                for svc, table in doc.items() if isinstance(table, dict)}

    def save(self, tenant_id: str, services: dict[str, ServiceSecrets]) -> None:
        """Replace the file with exactly these services; remove it when there are none."""
        path = self.path(tenant_id)
        ensure_private_dir(self.directory)
        if not services:
            self.delete(tenant_id)
            return
        doc = {svc: asdict(s) for svc, s in sorted(services.items())}
        write_atomic(path, tomli_w.dumps(doc).encode(), 0o600)

    def delete(self, tenant_id: str) -> bool:
        try:
            self.path(tenant_id).unlink()
        except FileNotFoundError:
            return False
        return True
