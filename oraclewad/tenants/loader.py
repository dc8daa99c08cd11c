"""Load every tenant file of tenants.d: valid tenants run, invalid ones are reported and skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from oraclewad.errors import Problem
from oraclewad.settings import Policy
from oraclewad.tenants.ids import id_key
from oraclewad.tenants.model import Tenant, parse_tenant
from oraclewad.tomlcheck import load_toml


@dataclass
class TenantSet:
    tenants: dict[str, Tenant] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def tenant_files(tenants_dir: Path) -> list[Path]:
    """`*.toml` directly in tenants.d; dot-files (editor temp files, .removed/) are not tenants."""
    if not tenants_dir.is_dir():
        return []
    return sorted(p for p in tenants_dir.glob("*.toml") if not p.name.startswith("."))


def load_tenant_file(path: Path, policy: Policy, problems: list[Problem]) -> Tenant | None:
    doc = load_toml(path, problems)
    return None if doc is None else parse_tenant(doc, path, policy, problems)


def load_tenants(tenants_dir: Path, policy: Policy) -> TenantSet:
    result = TenantSet()
    if not tenants_dir.is_dir():
        result.problems.append(Problem(str(tenants_dir), "", "tenants directory does not exist: create it"))
        return result
    by_key: dict[str, Tenant] = {}
    for path in tenant_files(tenants_dir):
        tenant = load_tenant_file(path, policy, result.problems)
        if tenant is None:
            continue
        other = by_key.get(id_key(tenant.id))
        if other is not None:
            result.problems.append(Problem(
                str(path), "id", f"{tenant.id!r} clashes with {other.id!r} in {other.source.name}: "
                "ids are unique ignoring case and '-'/'_'; rename one of them"))
            continue
        by_key[id_key(tenant.id)] = tenant
        result.tenants[tenant.id] = tenant
    return result
