"""Changes to tenants.d made on an operator's behalf (oraclectl tenant add/remove).

tenants.d stays the single source of truth: adding writes a file exactly as an operator
would, then the daemon reloads. Writes never overwrite a file someone else just made.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import tomli_w

from oraclewad.errors import AlreadyExists, NotFound
from oraclewad.files import write_atomic
from oraclewad.tenants.ids import id_key
from oraclewad.tenants.loader import tenant_files

REMOVED_DIR = ".removed"
_STAMP = "%Y%m%dT%H%M%S"


def find_tenant_file(tenants_dir: Path, tenant_id: str) -> Path | None:
    """The file holding this id (matched ignoring case and '-'/'_', as uniqueness is)."""
    key = id_key(tenant_id)
    return next((p for p in tenant_files(tenants_dir) if id_key(p.stem) == key), None)


def already_exists(tenant_id: str, existing: Path) -> str:
    """Names the tenant that holds the id, which may be spelled differently."""
    if existing.stem == tenant_id:
        return f"tenant {tenant_id!r} already exists ({existing}): remove it first or pick another id"
    return (f"tenant {existing.stem!r} already exists ({existing}) and ids are unique ignoring case "
            f"and '-'/'_', so {tenant_id!r} is taken: pick another id")


def create_tenant_file(tenants_dir: Path, doc: dict[str, Any]) -> Path:
    """Write tenants.d/<id>.toml; AlreadyExists if that id (in any case) has a file already."""
    tenant_id = doc["id"]
    existing = find_tenant_file(tenants_dir, tenant_id)
    if existing is not None:
        raise AlreadyExists(already_exists(tenant_id, existing))
    path = tenants_dir / f"{tenant_id}.toml"
    header = b"# Written by `oraclectl tenant add`; edit freely, then `oraclectl reload`.\n"
    try:
        write_atomic(path, header + tomli_w.dumps(doc).encode(), 0o644, exclusive=True)
    except FileExistsError:
        raise AlreadyExists(f"tenant {tenant_id!r} already exists ({path})") from None
    return path


def retire_tenant_file(tenants_dir: Path, tenant_id: str) -> Path:
    """Move the tenant's file to tenants.d/.removed/ (kept for the record, never loaded)."""
    path = find_tenant_file(tenants_dir, tenant_id)
    if path is None:
        raise NotFound(f"no tenant {tenant_id!r} in {tenants_dir}")
    removed = tenants_dir / REMOVED_DIR
    removed.mkdir(mode=0o750, exist_ok=True)
    target = removed / f"{path.stem}.{time.strftime(_STAMP)}.toml"
    os.replace(path, target)
    return target


def retired_files(tenants_dir: Path) -> dict[str, list[Path]]:
    """Retired tenant files by tenant id, oldest first (`.removed/<id>.<when>.toml`)."""
    found: dict[str, list[Path]] = {}
    for path in sorted((tenants_dir / REMOVED_DIR).glob("*.toml")):
        tenant_id = path.stem.rpartition(".")[0]
        if tenant_id and retired_at(path) is not None:
            found.setdefault(tenant_id, []).append(path)
    for paths in found.values():
        paths.sort(key=lambda p: p.stem.rpartition(".")[2])
    return found


def retired_at(path: Path) -> float | None:
    """When the file was retired (from its name, local time), or None if the name is not ours."""
    try:
        return time.mktime(time.strptime(path.stem.rpartition(".")[2], _STAMP))
    except ValueError:
        return None


def restore_tenant_file(tenants_dir: Path, tenant_id: str) -> Path:
    """Put the newest retired file of this id back as tenants.d/<id>.toml."""
    retired = retired_files(tenants_dir).get(tenant_id)
    if not retired:
        raise NotFound(f"no removed tenant {tenant_id!r} in {tenants_dir / REMOVED_DIR}; "
                       "`oraclectl tenant list --removed` shows them")
    existing = find_tenant_file(tenants_dir, tenant_id)
    if existing is not None:
        raise AlreadyExists(already_exists(tenant_id, existing))
    path = tenants_dir / f"{tenant_id}.toml"
    try:
        os.link(retired[-1], path)      # fails if the name appeared meanwhile; never overwrites
    except FileExistsError:
        raise AlreadyExists(already_exists(tenant_id, path)) from None
    os.unlink(retired[-1])
    return path
