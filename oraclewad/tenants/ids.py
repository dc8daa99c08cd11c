"""Tenant id rules and the names derived from an id."""

from __future__ import annotations

import re

SERVICES = ("recovery", "broadcast")
ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
ID_RULE = "a letter first, then letters, digits, '_' or '-', at most 40 characters (e.g. lojaABC)"


def id_problem(tenant_id: object) -> str | None:
    """Why this is not a valid tenant id, or None. Checked before any file, SQL or shell use."""
    if not isinstance(tenant_id, str) or not tenant_id:
        return f"tenant id is required: {ID_RULE}"
    if not ID_RE.fullmatch(tenant_id):
        return f"invalid tenant id {tenant_id!r}: {ID_RULE}"
    if id_key(tenant_id) == "pg" or id_key(tenant_id).startswith("pg_"):
        return f"invalid tenant id {tenant_id!r}: PostgreSQL reserves role names starting with 'pg_'"
    return None


def id_key(tenant_id: str) -> str:
    """Ids are unique case-insensitively; this is the form compared and used in resource names."""
    return tenant_id.lower().replace("-", "_")


def resource_name(tenant_id: str, service: str) -> str:
    """Database, role and Redis ACL user of one tenant-service: `<tenant>_<service>`."""
    return f"{id_key(tenant_id)}_{service}"


def key_prefix(tenant_id: str, service: str) -> str:
    """The Redis keys and channels of one tenant-service live under this prefix."""
    return f"{id_key(tenant_id)}:{service}:"


def unit_name(tenant_id: str, service: str) -> str:
    """The supervisor's name for one tenant-service."""
    return f"{tenant_id}/{service}"
