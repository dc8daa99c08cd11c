"""Tenant id checks and the names provisioning derives from an id (database, role, ACL user, prefix).

The id rule and derivations themselves live in oraclewad.tenants.ids (one source of truth for
the daemon); this module adds the checks provisioning needs before any name reaches SQL or
Redis: the id rule, the service rule, PostgreSQL's reserved `pg_` prefix and its 63-byte limit.
"""

from __future__ import annotations

import re

from oraclewad.errors import InvalidArgument
from oraclewad.tenants import ids

SERVICE_RE = re.compile(r"[a-z][a-z0-9_]{0,19}")
PG_IDENTIFIER_MAX_BYTES = 63


def validate_tenant_id(tid: str) -> None:
    """Raise InvalidArgument unless `tid` is a well-formed tenant id.

    1-40 characters, a letter first, then letters, digits, '_' or '-'. Ids whose derived names
    would start with 'pg_' are refused too: PostgreSQL reserves those role names.
    """
    problem = ids.id_problem(tid)
    if problem is not None:
        raise InvalidArgument(problem, field="tenant")


def validate_service(service: str) -> None:
    if not isinstance(service, str) or not SERVICE_RE.fullmatch(service):
        raise InvalidArgument(f"invalid service name {service!r}: lower-case letters, digits and '_', "
                              "a letter first, at most 20 characters", field="service")


def tenant_key(tenant_id: str) -> str:
    """Lower-cased id with '-' as '_': the secrets file stem and the start of every derived name."""
    validate_tenant_id(tenant_id)
    return ids.id_key(tenant_id)


def resource_name(tenant_id: str, service: str) -> str:
    """`<tenant>_<service>`: the database, its owning role and the Redis ACL user.

    Lower-cased, '-' replaced by '_' ('Loja-2' + 'recovery' -> 'loja_2_recovery').
    """
    validate_tenant_id(tenant_id)
    validate_service(service)
    name = ids.resource_name(tenant_id, service)
    if len(name.encode()) > PG_IDENTIFIER_MAX_BYTES:
        # Cannot happen with today's id and service limits; kept so a loosened rule fails loudly
        # instead of PostgreSQL silently truncating the name.
        raise InvalidArgument(f"derived name {name!r} exceeds PostgreSQL's {PG_IDENTIFIER_MAX_BYTES}-byte "
                              "identifier limit", field="tenant")
    return name


def key_prefix(tenant_id: str, service: str) -> str:
    """Redis key and channel prefix of one tenant-service, e.g. 'imperio:recovery:'."""
    validate_tenant_id(tenant_id)
    validate_service(service)
    return ids.key_prefix(tenant_id, service)


def key_glob(prefix: str) -> str:
    """The Redis glob of every key (and channel) under `prefix`, its glob characters escaped: the
    one pattern for ACL rules, SCAN and purge."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
