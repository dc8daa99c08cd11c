"""Load every tenant file of tenants.d: valid tenants run, invalid ones are reported and skipped.

A tenant file is untrusted input: whatever is wrong with one (not a regular file, too big,
binary, nested deeper than any tenant needs, a parser bug) is that file's problem only.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oraclewad.errors import Problem
from oraclewad.settings import Policy
from oraclewad.tenants.ids import id_key
from oraclewad.tenants.model import Tenant, parse_tenant

log = logging.getLogger("oraclewad.tenants")

MAX_FILE_BYTES = 256 * 1024     # a tenant file is a few KB; templates included, far below this
MAX_DEPTH = 8                   # tables and lists inside each other (a tenant file needs about 4)
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


@dataclass
class TenantSet:
    tenants: dict[str, Tenant] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def tenant_files(tenants_dir: Path) -> list[Path]:
    """`*.toml` directly in tenants.d; dot-files (editor temp files, .removed/) are not tenants."""
    if not tenants_dir.is_dir():
        return []
    return sorted(p for p in tenants_dir.glob("*.toml") if not p.name.startswith("."))


def read_tenant_bytes(path: Path, *, follow_symlinks: bool = False) -> bytes:
    """The file's bytes, or ValueError saying why it is not read.

    Opened non-blocking (a FIFO never stalls the loader) and checked with fstat on the open fd,
    so a file swapped after the check is still the one judged.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise ValueError("is a symbolic link: tenant files must be regular files "
                             "(or set [daemon] tenant_symlinks = true)") from None
        raise ValueError(f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise ValueError(f"is {kind}, not a regular file: remove it from the tenants directory")
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"is {st.st_size} bytes; a tenant file may have at most {MAX_FILE_BYTES}")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:   # grew while being read
            raise ValueError(f"is more than {MAX_FILE_BYTES} bytes, the most a tenant file may have")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_deep(doc: Any) -> bool:
    stack = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_tenant_bytes(data: bytes, path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    if b"\0" in data:
        problems.append(Problem(str(path), "", "is a binary file, not TOML text"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(Problem(str(path), "", f"is not UTF-8 text (byte {e.start}): save it as UTF-8"))
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(Problem(str(path), "", f"not valid TOML: {e}"))
        return None
    except RecursionError:
        doc = None
    if doc is None or _too_deep(doc):
        problems.append(Problem(str(path), "", f"nests tables or lists more than {MAX_DEPTH} deep"))
        return None
    return doc


def load_tenant_file(path: Path, policy: Policy, problems: list[Problem], *,
                     follow_symlinks: bool = False) -> Tenant | None:
    """One file, validated; any failure whatever its cause becomes a Problem of this file."""
    try:
        data = read_tenant_bytes(path, follow_symlinks=follow_symlinks)
    except ValueError as e:
        problems.append(Problem(str(path), "", str(e)))
        return None
    before = len(problems)
    try:
        doc = parse_tenant_bytes(data, path, problems)
        return None if doc is None else parse_tenant(doc, path, policy, problems)
    except Exception as e:  # a validator bug must cost this file only, never the fleet
        log.exception("validating %s failed", path)
        del problems[before:]
        problems.append(Problem(str(path), "", f"could not be validated ({type(e).__name__}); "
                                "see the daemon log"))
        return None


def load_tenants(tenants_dir: Path, policy: Policy, incumbents: Collection[str] = (), *,
                 follow_symlinks: bool = False) -> TenantSet:
    """Every valid tenant of tenants.d. Ids are unique ignoring case and '-'/'_': when two files
    claim one, the tenant in `incumbents` (running, or remembered by the daemon) keeps it and the
    other file is the one refused; among newcomers the first file by name wins."""
    result = TenantSet()
    if not tenants_dir.is_dir():
        result.problems.append(Problem(str(tenants_dir), "", "tenants directory does not exist: create it"))
        return result
    loaded = [t for path in tenant_files(tenants_dir)
              if (t := load_tenant_file(path, policy, result.problems,
                                        follow_symlinks=follow_symlinks)) is not None]
    # Incumbents first (stable sort keeps name order within each half).
    loaded.sort(key=lambda t: t.id not in incumbents)
    by_key: dict[str, Tenant] = {}
    spelled = {id_key(i): i for i in incumbents}
    for tenant in loaded:
        held = spelled.get(id_key(tenant.id), tenant.id)
        if held != tenant.id and held not in (t.id for t in loaded):
            # A removed tenant whose data is kept still owns its databases and key prefix.
            result.problems.append(Problem(
                str(tenant.source), "id", f"{tenant.id!r} is the removed tenant {held!r} spelled "
                f"differently, and its data is kept: `oraclectl tenant restore {held}` brings it back, "
                f"`oraclectl tenant purge {held}` frees the id"))
            continue
        other = by_key.get(id_key(tenant.id))
        if other is not None:
            held = ", which holds that id already" if other.id in incumbents else ""
            result.problems.append(Problem(
                str(tenant.source), "id", f"{tenant.id!r} clashes with {other.id!r} in "
                f"{other.source.name}{held}: ids are unique ignoring case and '-'/'_'; "
                f"rename or delete {tenant.source.name}"))
            continue
        by_key[id_key(tenant.id)] = tenant
    result.tenants = {t.id: t for t in sorted(by_key.values(), key=lambda t: t.source.name)}
    return result
