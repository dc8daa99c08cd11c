"""What the supervisor runs: host programs and tenant services as ProcessSpecs, with the child
config each service gets and the secrets in it (the Evolution key, the webhook JWT key)."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from oraclewad import childconfig, contract, releases
from oraclewad.errors import FailedPrecondition
from oraclewad.files import write_atomic
from oraclewad.provision import Provisioner
from oraclewad.provision.webhook_secrets import WebhookSecrets
from oraclewad.secretfiles import read_secret_file
from oraclewad.settings import Settings
from oraclewad.supervisor import ProcessSpec
from oraclewad.tenants.ids import id_key, unit_name
from oraclewad.tenants.model import Tenant
from oraclewad.tenants.uids import closed_to_others

log = logging.getLogger("oraclewad.fleet")
PROGRAMS = "programs"


class SpecBuilder:
    def __init__(self, settings: Settings, provisioner: Provisioner, shop_secrets: WebhookSecrets) -> None:
        self.settings = settings
        self.provisioner = provisioner
        self.shop_secrets = shop_secrets
        self._release_closed: dict[str, str | None] = {}    # release -> why tenant users cannot read it

    def programs(self) -> dict[str, ProcessSpec]:
        specs: dict[str, ProcessSpec] = {}
        for program in self.settings.programs:
            name = unit_name(PROGRAMS, program.name)
            specs[name] = ProcessSpec(
                name=name, group=PROGRAMS, argv=program.command, env=program.env, cwd=program.cwd,
                listen=(self.settings.bind_host, program.port) if program.port else None,
                notify=program.notify, config=None, admin_socket=False,
                log_dir=self.settings.log_dir / PROGRAMS / program.name, policy=program.policy,
                labels=(("port", str(program.port)),) if program.port else ())
        return specs

    def service(self, tenant: Tenant, service: str, port: int, uid: int | None) -> ProcessSpec:
        svc = tenant.service(service)
        assert svc is not None
        name = unit_name(tenant.id, service)
        release = self.release(tenant)
        config = childconfig.ChildConfig(
            tenant=tenant.id, service=service, display_name=tenant.name, release=release.version,
            http=childconfig.Http(host=self.settings.bind_host, port=port),
            evolution=childconfig.Evolution(
                url=tenant.evolution.url, api_key=self.evolution_key(tenant),
                api_version=tenant.evolution.api_version,
                webhook_url=f"{self.settings.public_url}:{port}/webhooks/evolution",
                webhook_jwt_key=self.evolution_webhook_key(tenant.id, service)),
            instances=svc.instances,
            antiban=tenant.antiban, templates=tenant.templates, recovery=tenant.recovery,
            broadcast=tenant.broadcast,
            **_fragment(self.shop_secrets.get(tenant.id).child_config(time.time())),
            **_fragment(self.provisioner.child_config_fragment(tenant.id, service)),
        )
        return ProcessSpec(
            name=name, group=tenant.id,
            # -P: the daemon's working directory (a source checkout, say) must not shadow the
            # release's own package.
            argv=(release.python, "-P", "-m", f"oraclewad.services.{service}"),
            env=((contract.ENV_TENANT, tenant.id), (contract.ENV_SERVICE, service)),
            listen=(self.settings.bind_host, port), notify=True,
            config=childconfig.encode(config),
            log_dir=self.settings.log_dir / tenant.id / service, policy=svc.policy,
            user=self.user(release, uid),
            private_tmp=self.settings.shared_dir / "tmp" / id_key(tenant.id),
            labels=(("release", release.version), ("port", str(port))))

    def user(self, release: releases.Release, uid: int | None) -> tuple[int, int] | None:
        """The tenant's own uid/gid, or None (the daemon's) when its release is closed to it."""
        if uid is None:
            return None
        if release.version not in self._release_closed:
            paths = [Path(release.python)]
            if release.version == releases.BUNDLED:
                paths.append(Path(__file__).parent)     # the package the bundled python imports
            elif release.path is not None:
                paths.append(release.path)
            why = closed_to_others(paths)
            self._release_closed[release.version] = why
            if why is not None:
                log.warning("release %s cannot be read by tenant users (%s): its tenants run as the "
                            "daemon's user; make it readable (chmod o+rX) and restart", release.version, why)
        return None if self._release_closed[release.version] else (uid, uid)

    def release(self, tenant: Tenant) -> releases.Release:
        """The tenant's release, read from its manifest (FailedPrecondition when not installed)."""
        return releases.resolve(self.settings.releases_dir, self.release_version(tenant))

    def release_version(self, tenant: Tenant) -> str:
        """The version the tenant file asks for; no file read (status() calls it on the trio thread)."""
        return releases.normalize(tenant.release or self.settings.default_release)

    def secret_path(self, tenant_id: str, kind: str) -> Path:
        return self.settings.secrets_dir / f"{id_key(tenant_id)}.{kind}"

    def evolution_webhook_key(self, tenant_id: str, service: str) -> str:
        path = self.secret_path(tenant_id, f"{service}.evolution-webhook.key")
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            value = secrets.token_urlsafe(32)
            write_atomic(path, value.encode() + b"\n", 0o600)
            return value

    def evolution_key(self, tenant: Tenant) -> str:
        path = tenant.evolution.api_key_file
        if path is None:
            return ""
        try:
            return read_secret_file(path, state_dir=self.settings.state_dir,
                                    own=[self.secret_path(tenant.id, "evolution.key")])
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise FailedPrecondition(f"the Evolution API key file: {why}") from None


def _fragment(tables: dict[str, Any]) -> dict[str, Any]:
    """Fields of the child config built elsewhere as plain dicts (provisioning, shop secrets),
    typed through the schema: a key it does not declare is a bug here, not in the child."""
    decoded = childconfig.decode(childconfig.ChildConfig, tables)
    if decoded.problems:
        raise ValueError(f"child config: {'; '.join(decoded.problems)}")
    return {name: getattr(decoded.value, name) for name in tables}
