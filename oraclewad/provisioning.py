"""Where each tenant's databases and users stand, and the attempts that get them there.

A reload makes one attempt per new tenant and waits for it; a tenant whose server is unavailable
is retried in the background (Provisioner.provision_with_retry: backoff with jitter) until it is
provisioned, fails for good, or is removed. A later reload leaves such a retry to its backoff:
waiting on every pending tenant again would make each reload (and `tenant add`) as slow as the
whole fleet's attempts during an outage, and restarting every retry at once would undo the jitter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from oraclewad.errors import OracleError, Unavailable
from oraclewad.provision import Provisioner
from oraclewad.tenants.model import Tenant

SERVICES_PACKAGE = Path(__file__).parent / "services"


def migrations_dir(service: str) -> Path:
    # Read as files, not imported: the daemon never imports the services it runs.
    return SERVICES_PACKAGE / service / "migrations"


@dataclass
class Provisioning:
    """Where one tenant's databases and users stand."""

    done: bool = False
    status: str = "provisioning"
    scope: trio.CancelScope | None = None
    retrying: bool = False      # a background retry (backoff with jitter) is waiting for a server


class ProvisioningStates:
    """Each tenant's Provisioning, and the attempts (first, retried, repeated) that change it."""

    def __init__(self, provisioner: Provisioner, nursery: trio.Nursery,
                 publish: Callable[[str, str], None],
                 on_retried: Callable[[Tenant], Awaitable[None]]) -> None:
        self.provisioner = provisioner
        self.nursery = nursery
        self._publish = publish             # (tenant, message): a `provision` event
        self._on_retried = on_retried       # a background retry succeeded: start its services
        self.states: dict[str, Provisioning] = {}
        self.failures = 0                   # attempts that failed or found a server unavailable

    def get(self, tenant_id: str) -> Provisioning:
        return self.states.get(tenant_id, Provisioning())

    def done(self, tenant_id: str) -> bool:
        return self.get(tenant_id).done

    def retrying(self, tenant_id: str) -> bool:
        return self.get(tenant_id).retrying

    def forget(self, tenant_id: str) -> None:
        state = self.states.pop(tenant_id, None)
        if state and state.scope:
            state.scope.cancel()

    async def provision(self, tenant: Tenant) -> None:
        services = [s.name for s in tenant.services]
        await self.provisioner.provision(tenant.id, services, {s: migrations_dir(s) for s in services})

    async def again(self, tenant: Tenant) -> None:
        """Provision a known tenant once more (repair: credentials re-asserted)."""
        state = self.states.setdefault(tenant.id, Provisioning())
        await self.provision(tenant)
        state.done, state.status = True, "provisioned"

    async def first(self, tenant: Tenant) -> None:
        state = self.states.setdefault(tenant.id, Provisioning())
        if state.scope is not None:
            state.scope.cancel()
            state.retrying = False
        try:
            await self.provision(tenant)
        except Unavailable as e:
            self.failures += 1
            state.status = f"UNAVAILABLE: {e}"
            self._publish(tenant.id, state.status)
            # The scope exists before the task starts, so forget() or a later first() can cancel
            # a retry that has not begun yet (never two retry loops for one tenant).
            state.scope, state.retrying = trio.CancelScope(), True
            self.nursery.start_soon(self._retry, tenant, state, state.scope)
        except OracleError as e:
            self.failures += 1
            state.status = f"FAILED: {e}"
            self._publish(tenant.id, state.status)
        else:
            state.done, state.status = True, "provisioned"

    async def _retry(self, tenant: Tenant, state: Provisioning, scope: trio.CancelScope) -> None:
        def unavailable(status: str) -> None:
            if status.startswith("UNAVAILABLE"):
                self.failures += 1
                state.status = status

        services = [s.name for s in tenant.services]
        with scope:
            try:
                await self.provisioner.provision_with_retry(
                    tenant.id, services, {s: migrations_dir(s) for s in services}, on_status=unavailable,
                    wait_first=True)
            except OracleError as e:
                self.failures += 1
                state.status = f"FAILED: {e}"
                return
            finally:
                if state.scope is scope:
                    state.retrying = False
            state.done, state.status = True, "provisioned"
            self._publish(tenant.id, "provisioned")
            await self._on_retried(tenant)
