"""The fleet: tenants.d turned into provisioned, supervised services, and the operator's verbs on it.

Every change (a hand edit plus reload, `oraclectl tenant add`, `tenant remove`) goes through
`reload()`, so tenants.d stays the single source of truth.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from oraclewad import contract, health, releases, views
from oraclewad.deploy import Deployer
from oraclewad.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OracleError,
    Problem,
    Unavailable,
)
from oraclewad.events import EventHub
from oraclewad.files import write_atomic
from oraclewad.operations import (
    DaemonFigures,
    DeployView,
    EventView,
    HealthView,
    HistoryView,
    MetricsView,
    NewTenant,
    ProgressView,
    ReleaseView,
    ReloadView,
    RemovedView,
    ServiceCallView,
    ServiceView,
    SwapOptions,
    TenantView,
    WebhookSecretsView,
)
from oraclewad.procstat import proc_figures
from oraclewad.provision import Provisioner, usage
from oraclewad.provision.webhook_secrets import WebhookCredentials, WebhookSecrets
from oraclewad.provisioning import Provisioning, ProvisioningStates
from oraclewad.scrape import ChildScraper, key_figures
from oraclewad.settings import Settings
from oraclewad.specs import PROGRAMS, SpecBuilder
from oraclewad.supervisor import ProcessSpec, Supervisor
from oraclewad.supervisor.process import can_switch_users
from oraclewad.supervisor.spec import admin_socket_path
from oraclewad.supervisor.status import UP, State
from oraclewad.tenants.ids import SERVICES, id_key, id_problem, unit_name
from oraclewad.tenants.loader import load_tenants
from oraclewad.tenants.model import Tenant, parse_tenant
from oraclewad.tenants.ports import PortBook
from oraclewad.tenants.store import (
    already_exists,
    create_tenant_file,
    find_tenant_file,
    restore_tenant_file,
    retire_tenant_file,
    retired_at,
    retired_files,
)
from oraclewad.tenants.uids import UidBook

log = logging.getLogger("oraclewad.fleet")
REASSERT_EVERY = 30.0      # seconds between two automatic re-provisionings of one tenant
SPAWNED = (State.STARTING, State.RUNNING, State.UNHEALTHY, State.BACKOFF, State.DEGRADED)
LOG_CHANNEL_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


class Fleet:
    """Implements oraclewad.operations.Operations."""

    def __init__(self, settings: Settings, supervisor: Supervisor, provisioner: Provisioner,
                 nursery: trio.Nursery) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.provisioner = provisioner
        self.nursery = nursery
        self.events = EventHub()
        self.tenants: dict[str, Tenant] = {}
        self.ports: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.provisioned = ProvisioningStates(provisioner, nursery, self._provision_event, self._retried)
        self.scraper = ChildScraper(self.admin_socket, settings.metrics_child_timeout)
        self.book = PortBook(settings.state_dir / "ports.json", settings.port_range, settings.bind_host)
        self.shop_secrets = WebhookSecrets(settings.secrets_dir)
        self.spec_builder = SpecBuilder(settings, provisioner, self.shop_secrets)
        self.uids: dict[str, int] = {}
        self.uid_book: UidBook | None = None
        if settings.uid_range is not None:
            if can_switch_users():
                self.uid_book = UidBook(settings.state_dir / "uids.json", settings.uid_range)
            else:
                log.warning("tenants share the daemon's user (uid %d): without CAP_SETUID and "
                            "CAP_SETGID it cannot give each tenant its own; run it from "
                            "systemd/oraclewad.service (or as root) to separate them", os.getuid())
        self.redis_usage: dict[str, usage.Usage] = {}
        self._lock = trio.Lock()
        self.deployer = Deployer(self)
        self._reasserted: dict[str, float] = {}

    @property
    def provisioning(self) -> dict[str, Provisioning]:
        """Each tenant's provisioning state (deploy.py checks `.done` before a swap)."""
        return self.provisioned.states

    # ---- reconciling ------------------------------------------------------------------------

    async def reload(self) -> ReloadView:
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> ReloadView:
        # Tenants that run or ran keep their ids against a later file spelling one differently.
        incumbents = set(self.tenants) | self.book.tenants()
        loaded = await trio.to_thread.run_sync(
            partial(load_tenants, self.settings.tenants_dir, self.settings.policy, incumbents,
                    follow_symlinks=self.settings.tenant_symlinks))
        reserved = [p.port for p in self.settings.programs if p.port]
        ports, port_problems = await trio.to_thread.run_sync(
            lambda: self.book.assign(loaded.tenants, reserved, self.ports))
        problems = loaded.problems + port_problems
        runnable = {tid: t for tid, t in loaded.tenants.items()
                    if all(unit_name(tid, s.name) in ports for s in t.services)}
        if self.uid_book is not None:
            book = self.uid_book
            self.uids, uid_problems = await trio.to_thread.run_sync(lambda: book.assign(runnable))
            problems += uid_problems
            runnable = {tid: t for tid, t in runnable.items() if tid in self.uids}
        for tid, tenant in list(runnable.items()):
            for key, check in (("release", self.spec_builder.release),
                               ("evolution.api_key_file", self.spec_builder.evolution_key)):
                try:
                    check(tenant)
                except OracleError as e:
                    problems.append(Problem(str(tenant.source), key, str(e)))
                    del runnable[tid]
                    break
        old = self.tenants
        self.tenants, self.ports, self.problems = runnable, ports, problems
        self.provisioner.role_count = sum(len(t.services) for t in runnable.values())
        reported = views.reported_problems(problems)
        for line in reported:
            self._publish("", "", "problem", message=line)

        for tid in set(old) - set(runnable):
            self.provisioned.forget(tid)
        # A tenant needs a first attempt when it is new, its set of services grew, or its last
        # attempt failed for good; one already retrying in the background keeps its backoff.
        pending = [t for tid, t in runnable.items()
                   if tid not in self.provisioning or tid not in old
                   or {s.name for s in t.services} - {s.name for s in old[tid].services}
                   or not (self.provisioning[tid].done or self.provisioned.retrying(tid))]
        # Every known tenant has a provisioning state before the next checkpoint: a call that
        # arrives while the first attempts run finds "provisioning", never a missing key.
        for tenant in pending:
            self.provisioning.setdefault(tenant.id, Provisioning())
        async with trio.open_nursery() as first_attempts:
            for tenant in pending:
                first_attempts.start_soon(self.provisioned.first, tenant)

        changes = self.supervisor.apply(self._specs())
        view = ReloadView(added=tuple(sorted(set(runnable) - set(old))),
                          removed=tuple(sorted(set(old) - set(runnable))),
                          restarted=tuple(changes.restarted), unchanged=tuple(changes.unchanged),
                          problems=reported)
        self._publish("", "", "reload", message=view.describe())
        return view

    def _provision_event(self, tenant_id: str, message: str) -> None:
        self._publish(tenant_id, "", "provision", message=message)

    async def _retried(self, tenant: Tenant) -> None:
        async with self._lock:
            if self.tenants.get(tenant.id) is tenant:
                self.supervisor.apply(self._specs())

    def _specs(self) -> dict[str, ProcessSpec]:
        specs = self.spec_builder.programs()
        for tenant in self.tenants.values():
            if not self.provisioned.done(tenant.id):
                continue
            for svc in tenant.services:
                spec = self._service_spec(tenant, svc.name)
                specs[spec.name] = spec
        return specs

    def _service_spec(self, tenant: Tenant, service: str) -> ProcessSpec:
        port = self.ports[unit_name(tenant.id, service)]
        return self.spec_builder.service(tenant, service, port, self.uids.get(tenant.id))

    def _release(self, tenant: Tenant) -> releases.Release:
        return self.spec_builder.release(tenant)

    def _publish(self, tenant: str, service: str, kind: str, state: str = "", message: str = "") -> None:
        self.events.publish(EventView(ts=time.time(), tenant=tenant, service=service, kind=kind,
                                      state=state, message=message))

    async def sample_usage_forever(self, interval: float) -> None:
        """Every `interval` seconds: each tenant's Redis keys and bytes (for /metrics)."""
        while True:
            prefixes = {tid: f"{id_key(tid)}:" for tid in self.tenants}
            try:
                self.redis_usage = await trio.to_thread.run_sync(
                    usage.sample, self.provisioner.servers.redis, prefixes)
            except Exception as e:  # a Redis outage: keep the last figures, say so once per sample
                log.info("Redis usage sample failed: %s", type(e).__name__)
            await trio.sleep(interval)

    async def forward_supervisor_events(self) -> None:
        """Supervisor state changes become fleet events (run as a daemon task)."""
        while True:  # a subscription that fell behind is dropped; take a new one
            async with self.supervisor.subscribe() as receive:
                async for event in receive:
                    group, _, service = event.name.partition("/")
                    self._publish(group, service, "state", state=event.state, message=event.message)
                    if event.state in (State.BACKOFF, State.DEGRADED) and group in self.tenants:
                        self._maybe_reassert(group, event.name)

    def _maybe_reassert(self, tenant_id: str, name: str) -> None:
        """A service that exited 69 could not log in to PostgreSQL or Redis. Its tenant may have
        changed its own password (ALTER ROLE ... PASSWORD): provision it again, which re-asserts
        the credentials, so the next restart works. At most once per REASSERT_EVERY seconds."""
        try:
            code = self.supervisor.status(name).exit_code
        except NotFound:
            return
        now = trio.current_time()
        last = self._reasserted.get(tenant_id, -math.inf)
        if code != contract.EX_UNAVAILABLE or now - last < REASSERT_EVERY:
            return
        self._reasserted[tenant_id] = now
        tenant = self.tenants[tenant_id]

        async def reassert() -> None:
            try:
                await self.provisioned.provision(tenant)
            except OracleError as e:
                log.warning("re-provisioning %s after exit %d failed: %s", tenant_id, code, e)
                return
            log.info("re-provisioned %s after %s exited %d (credentials re-asserted)", tenant_id, name, code)
            self._publish(tenant_id, "", "provision",
                          message=f"credentials re-asserted after {name} exit {code}")

        self.nursery.start_soon(reassert)

    async def repair_tenant(self, tenant_id: str) -> list[str]:
        tenant = self._tenant(tenant_id)
        async with self._lock:
            await self.provisioned.again(tenant)
            lines = [f"provisioned {', '.join(tenant.unit_names())}: databases, roles and passwords, "
                     "Redis users, migrations"]
            self.supervisor.apply(self._specs())
        retry = [s.name for s in self.supervisor.snapshot()
                 if s.name in tenant.unit_names() and s.state in (State.BACKOFF, State.DEGRADED)]
        async with trio.open_nursery() as nursery:
            for name in retry:
                nursery.start_soon(self.supervisor.start, name)
        lines += [f"retried {name} now" for name in retry]
        self._publish(tenant_id, "", "tenant_repaired", message="; ".join(lines))
        return lines

    # ---- Operations: tenants ----------------------------------------------------------------

    async def add_tenant(self, new: NewTenant, *, wait: bool, timeout: float) -> TenantView:
        if (why := id_problem(new.id)) is not None:
            raise InvalidArgument(why, field="id")
        doc = self._tenant_doc(new)
        tenants_dir = self.settings.tenants_dir
        problems: list[Problem] = []
        if parse_tenant(doc, tenants_dir / f"{new.id}.toml", self.settings.policy, problems) is None:
            raise InvalidArgument(problems)
        async with self._lock:
            # Checked before the key is written so a refused add never touches another's secret.
            if (existing := find_tenant_file(tenants_dir, new.id)) is not None:
                raise AlreadyExists(already_exists(new.id, existing))
            removed = next((tid for tid in self._removed_ids()
                            if id_key(tid) == id_key(new.id) and tid != new.id), None)
            if removed is not None:
                raise AlreadyExists(f"tenant {removed!r} was removed with its data kept, and ids are unique "
                                    f"ignoring case: `oraclectl tenant restore {removed}` brings it back, "
                                    f"`oraclectl tenant purge {removed}` frees the id")
            if new.evolution_api_key:
                key_file = self.spec_builder.secret_path(new.id, "evolution.key")
                write_atomic(key_file, new.evolution_api_key.encode() + b"\n", 0o600)
                doc.setdefault("evolution", {})["api_key_file"] = str(key_file)
            create_tenant_file(tenants_dir, doc)
            self._publish(new.id, "", "tenant_added")
            await self._reload()
        if new.id not in self.tenants:
            bad = [str(p) for p in self.problems if Path(p.source).stem == new.id]
            raise FailedPrecondition(f"tenant {new.id!r} was written but not started: {'; '.join(bad)}")
        if wait:
            await self.wait_ready(new.id, timeout)
        return self.get_tenant(new.id)

    def _tenant_doc(self, new: NewTenant) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": new.id, "name": new.name or new.id}
        doc["services"] = "all" if set(new.services) == set(SERVICES) else list(new.services)
        if new.release:
            doc["release"] = releases.check_version(new.release, "release")
        if new.evolution_url:
            doc["evolution"] = {"url": new.evolution_url}
        for service, instances in (("recovery", new.recovery_instances),
                                   ("broadcast", new.broadcast_instances)):
            if instances:
                doc[service] = {"instances": list(instances)}
        for key, value in new.extra.items():
            if key in doc and isinstance(value, dict) and isinstance(doc[key], dict):
                doc[key] = {**value, **doc[key]}
            else:
                doc.setdefault(key, value)
        return doc

    async def wait_spawned(self, timeout: float) -> None:
        """Until every service that should run has a process (what READY=1 to systemd promises)."""
        held_down = self.supervisor.operator_stopped
        with trio.move_on_after(timeout):
            for snap in self.supervisor.snapshot():
                if snap.state == State.STOPPED and snap.name not in held_down:
                    with contextlib.suppress(NotFound):
                        await self.supervisor.wait_state(snap.name, SPAWNED, timeout)

    async def wait_ready(self, tenant_id: str, timeout: float) -> None:
        with trio.move_on_after(timeout):
            for name in self._tenant(tenant_id).unit_names():
                while not self._supervised(name):
                    await trio.sleep(0.1)  # provisioning (and its retries) come first
                if name not in self.supervisor.operator_stopped:
                    # Unhealthy came after READY=1 (e.g. no instance paired yet, which the
                    # operator does next): the add is done, and status says why.
                    await self.supervisor.wait_state(name, (State.RUNNING, State.UNHEALTHY), math.inf)
            return
        states = ", ".join(f"{v.service} {v.state}{': ' + v.message if v.message else ''}"
                           for v in self.status(tenant_id))
        raise Unavailable(f"tenant {tenant_id!r} is not ready after {timeout:g}s ({states}); "
                          f"see `oraclectl logs {tenant_id}`")

    def _supervised(self, name: str) -> bool:
        try:
            self.supervisor.status(name)
        except NotFound:
            return False
        return True

    async def remove_tenant(self, tenant_id: str, *, purge: bool) -> list[str]:
        async with self._lock:
            if purge and tenant_id in self._removed_ids():
                lines = await self._purge(tenant_id)   # removed earlier, data kept: purge it now
                self._publish(tenant_id, "", "tenant_purged", message="; ".join(lines))
                return lines
            tenant = self.tenants.get(tenant_id)
            moved = retire_tenant_file(self.settings.tenants_dir, tenant_id)
            lines = [f"moved {moved.name} to {moved.parent}"]
            await self._reload()
            if tenant is not None:
                lines += [f"stopped {name}" for name in tenant.unit_names()]
                await self.supervisor.forget(tenant.unit_names())
            if purge:
                lines += await self._purge(tenant_id)
            else:
                lines.append("kept databases, Redis keys, secrets, ports and logs "
                             f"(`oraclectl tenant purge {tenant_id}` removes them, "
                             f"`oraclectl tenant restore {tenant_id}` brings the tenant back)")
            self._publish(tenant_id, "", "tenant_removed", message="; ".join(lines))
            return lines

    async def _purge(self, tenant_id: str) -> list[str]:
        """Everything of a tenant that has no file in tenants.d any more (call under the lock)."""
        for service in SERVICES:   # its processes let go of their logs before the folder goes
            with contextlib.suppress(trio.TooSlowError):
                await self.supervisor.wait_removed(unit_name(tenant_id, service),
                                                   self.settings.policy.stop_grace + 5)
        lines = await self.provisioner.purge(tenant_id)
        for path in sorted(self.settings.secrets_dir.glob(f"{id_key(tenant_id)}.*")):
            path.unlink()
            lines.append(f"deleted secret {path.name}")
        lines += [f"freed {line}" for line in self.book.forget(tenant_id)]
        if self.uid_book is not None and self.uid_book.forget(tenant_id):
            lines.append("freed the tenant's uid")
        logs = self.settings.log_dir / tenant_id
        if logs.is_dir():
            await trio.to_thread.run_sync(shutil.rmtree, logs)
            lines.append(f"deleted logs {logs}")
        for path in retired_files(self.settings.tenants_dir).get(tenant_id, []):
            path.unlink()
            lines.append(f"deleted retired tenant file {path.name}")
        return lines

    def _removed_ids(self) -> set[str]:
        """Ids of tenants that were removed with their data kept (no file in tenants.d)."""
        tenants_dir = self.settings.tenants_dir
        known = set(retired_files(tenants_dir)) | self.book.tenants()
        return {tid for tid in known
                if id_problem(tid) is None and find_tenant_file(tenants_dir, tid) is None}

    async def removed_tenants(self) -> list[RemovedView]:
        retired = retired_files(self.settings.tenants_dir)
        removed = []
        for tid in sorted(self._removed_ids(), key=str.lower):
            kept: list[str] = []
            size = 0
            try:
                for what, nbytes in await self.provisioner.kept(tid, SERVICES):
                    kept.append(f"{what} {views.size_text(nbytes)}" if nbytes else what)
                    size += nbytes
            except Unavailable as e:
                kept.append(f"databases and Redis keys: unknown ({e})")
            logs = self.settings.log_dir / tid
            if logs.is_dir():
                nbytes = sum(p.stat().st_size for p in logs.rglob("*") if p.is_file())
                kept.append(f"logs {logs} {views.size_text(nbytes)}")
                size += nbytes
            secrets_files = sorted(p.name for p in self.settings.secrets_dir.glob(f"{id_key(tid)}.*"))
            if secrets_files:
                kept.append(f"secrets {', '.join(secrets_files)}")
            ports = {unit: port for unit, port in self.book.remembered.items()
                     if unit.partition("/")[0] == tid}
            if ports:
                kept.append("ports " + ", ".join(f"{unit.partition('/')[2]}:{port}"
                                                 for unit, port in sorted(ports.items())))
            files = retired.get(tid, [])
            if files:
                kept.append(f"tenant file {files[-1]}")
            removed.append(RemovedView(tid, retired_at(files[-1]) if files else None, size, tuple(kept)))
        return removed

    async def purge_tenant(self, tenant_id: str) -> list[str]:
        if (why := id_problem(tenant_id)) is not None:
            raise InvalidArgument(why, field="id")
        async with self._lock:
            if (active := find_tenant_file(self.settings.tenants_dir, tenant_id)) is not None:
                raise FailedPrecondition(f"tenant {active.stem!r} is not removed ({active}): `oraclectl "
                                         f"tenant remove {active.stem} --purge` removes and purges it")
            if tenant_id not in self._removed_ids():
                raise NotFound(f"no removed tenant {tenant_id!r}; "
                               "`oraclectl tenant list --removed` shows them")
            lines = await self._purge(tenant_id)
            self._publish(tenant_id, "", "tenant_purged", message="; ".join(lines))
            return lines

    async def restore_tenant(self, tenant_id: str, *, wait: bool, timeout: float) -> TenantView:
        if (why := id_problem(tenant_id)) is not None:
            raise InvalidArgument(why, field="id")
        async with self._lock:
            restore_tenant_file(self.settings.tenants_dir, tenant_id)
            self._publish(tenant_id, "", "tenant_restored")
            await self._reload()
        if tenant_id not in self.tenants:
            bad = [str(p) for p in self.problems if Path(p.source).stem == tenant_id]
            raise FailedPrecondition(f"tenant {tenant_id!r} was restored but not started: {'; '.join(bad)}")
        if wait:
            await self.wait_ready(tenant_id, timeout)
        return self.get_tenant(tenant_id)

    def list_tenants(self) -> list[TenantView]:
        # One status pass for the whole fleet, not one per tenant (each pass snapshots every service).
        by_tenant: dict[str, list[ServiceView]] = {}
        for view in self.status():
            by_tenant.setdefault(view.tenant, []).append(view)
        return [self._tenant_view(self.tenants[tid], by_tenant.get(tid, []))
                for tid in sorted(self.tenants, key=str.lower)]

    def get_tenant(self, tenant_id: str) -> TenantView:
        return self._tenant_view(self._tenant(tenant_id), self.status(tenant_id))

    def _tenant_view(self, tenant: Tenant, states: list[ServiceView]) -> TenantView:
        return views.tenant_view(
            tenant, states, self.ports, public_url=self.settings.public_url,
            release=self.spec_builder.release_version(tenant),
            secrets_file=str(self.provisioner.secrets_path(tenant.id)),
            provisioned=self.provisioned.done(tenant.id))

    MAX_SECRET_OVERLAP_S = 30 * 86400.0

    def webhook_secrets(self, tenant_id: str) -> WebhookSecretsView:
        tenant = self._tenant(tenant_id)
        return self._secrets_view(tenant, self.shop_secrets.get(tenant.id))

    async def rotate_webhook_secret(self, tenant_id: str, overlap_s: float) -> WebhookSecretsView:
        if not 0 <= overlap_s <= self.MAX_SECRET_OVERLAP_S:
            raise InvalidArgument("must be between 0 and 30 days (in seconds)", field="overlap_s")
        async with self._lock:
            tenant = self._tenant(tenant_id)
            creds = self.shop_secrets.rotate(tenant.id, overlap_s, time.time())
            # The child reads its credentials from its config at start: a changed spec restarts it.
            self.supervisor.apply(self._specs())
        self._publish(tenant.id, "recovery", "secret_rotated",
                      message=f"webhook secret rotated, old one valid {overlap_s:.0f} s more")
        return self._secrets_view(tenant, creds)

    def _secrets_view(self, tenant: Tenant, creds: WebhookCredentials) -> WebhookSecretsView:
        port = self.ports.get(unit_name(tenant.id, "recovery")) if tenant.service("recovery") else None
        return views.secrets_view(tenant, creds, port, public_url=self.settings.public_url,
                                  file=str(self.shop_secrets.path(tenant.id)))

    def _tenant(self, tenant_id: str) -> Tenant:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            bad = [str(p) for p in self.problems if Path(p.source).stem == tenant_id]
            if bad:
                raise FailedPrecondition(f"tenant {tenant_id!r} is not running: {'; '.join(bad)}")
            raise NotFound(f"no tenant {tenant_id!r}; `oraclectl tenant list` shows the tenants")
        return tenant

    # ---- Operations: services ---------------------------------------------------------------

    def status(self, tenant_id: str | None = None) -> list[ServiceView]:
        if tenant_id not in (None, PROGRAMS):
            self._tenant(tenant_id)  # NotFound for an unknown id
        return views.service_views(self.tenants, self.ports, self.provisioning, self.supervisor.snapshot(),
                                   self.problems, self.settings.tenants_dir,
                                   self.spec_builder.release_version, tenant_id)

    def _names(self, tenant_id: str, service: str | None) -> list[str]:
        if tenant_id == PROGRAMS:
            names = [unit_name(PROGRAMS, p.name) for p in self.settings.programs]
        else:
            names = self._tenant(tenant_id).unit_names()
        if service is not None:
            wanted = unit_name(tenant_id, service)
            if wanted not in names:
                raise NotFound(f"tenant {tenant_id!r} has no service {service!r}; it runs "
                               f"{', '.join(n.partition('/')[2] for n in names)}")
            names = [wanted]
        return names

    async def _each(self, verb: Callable[[str], Awaitable[object]], tenant_id: str,
                    service: str | None) -> list[ServiceView]:
        names = self._names(tenant_id, service)
        state = self.provisioned.get(tenant_id)
        if tenant_id != PROGRAMS and not state.done:
            raise Unavailable(f"tenant {tenant_id!r} is not provisioned yet: {state.status}")
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(verb, name)
        return [v for v in self.status(tenant_id) if service in (None, v.service)]

    async def start(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each(self.supervisor.start, tenant_id, service)

    async def stop(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each(self.supervisor.stop, tenant_id, service)

    async def restart(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each(self.supervisor.restart, tenant_id, service)

    async def health(self, tenant_id: str | None = None) -> list[HealthView]:
        services = [v for v in self.status(tenant_id) if v.tenant != PROGRAMS]
        results: dict[int, HealthView] = {}

        async def probe(i: int, view: ServiceView) -> None:
            results[i] = await health.probe(view, self.admin_socket(view.tenant, view.service))

        async with trio.open_nursery() as nursery:
            for i, view in enumerate(services):
                nursery.start_soon(probe, i, view)
        return [results[i] for i in range(len(services))]

    def admin_socket(self, tenant_id: str, service: str) -> str:
        # The serving process's: during and after a swap the two processes' sockets alternate.
        path = self.supervisor.admin_path(unit_name(tenant_id, service))
        return str(path or admin_socket_path(self.settings.run_dir, tenant_id, service))

    async def service_call(self, tenant_id: str, service: str, method: str, path: str, body_json: str,
                           timeout: float) -> ServiceCallView:
        """A thin router: the service owns its API; the answer goes back as the service wrote it."""
        if tenant_id == PROGRAMS:
            raise InvalidArgument("host programs have no admin API", field="tenant")
        [name] = self._names(tenant_id, service)
        method = health.check_call(method, path, body_json)
        [view] = [v for v in self.status(tenant_id) if v.service == service]
        if (why := health.unanswerable(view)) is not None:
            raise Unavailable(f"{name} is {why}; `oraclectl status {tenant_id}` shows why")
        return await health.call(name, self.admin_socket(tenant_id, service), service, method, path,
                                 body_json, timeout)

    async def metrics(self, tenant_id: str | None = None) -> list[MetricsView]:
        snaps = {s.name: s for s in self.supervisor.snapshot()}
        services = [v for v in self.status(tenant_id) if v.state != State.INVALID]
        scraped = await self.scraper.scrape([(v.tenant, v.service) for v in services
                                             if v.pid and v.state in UP and v.tenant != PROGRAMS])
        if tenant_id is None:
            await self.scraper.forget_others((v.tenant, v.service) for v in services)

        def read() -> list[Mapping[str, float]]:
            # /proc of 200 children and parsing their metrics: off the event loop.
            self.scraper.parse(scraped.values())
            return [proc_figures(v.pid) if v.pid else {} for v in services]

        procs = await trio.to_thread.run_sync(read)
        result = []
        for view, proc in zip(services, procs, strict=True):
            key = (view.tenant, view.service)
            figures: dict[str, float] = {"restarts": float(view.restarts), "ready": float(view.ready),
                                         "uptime_s": float(view.uptime_s or 0.0), **proc}
            child = scraped.get(key)
            if child is not None:
                figures.update(key_figures(child.families))
                figures["scrape_seconds"] = child.seconds
                figures["scrape_timeouts"] = float(self.scraper.timeouts.get(key, 0))
                figures["scrape_errors"] = float(self.scraper.errors.get(key, 0))
            snap = snaps.get(unit_name(view.tenant, view.service))
            reasons: dict[str, int] = {}
            if snap is not None:
                reasons = dict(snap.restart_reasons)
                figures["log_bytes"] = float(snap.log_bytes)
                if snap.exit_code is not None:
                    figures["last_exit_code"] = float(snap.exit_code)
                if snap.start_seconds is not None:
                    figures["start_seconds"] = snap.start_seconds
            result.append(MetricsView(view.tenant, view.service, figures, state=view.state,
                                      release=view.release, restart_reasons=reasons,
                                      scrape=child.outcome if child else "",
                                      families=tuple(child.families) if child else ()))
        return result

    def daemon_figures(self) -> DaemonFigures:
        tenants = views.tenant_counts(self.status())
        free = size = None
        with contextlib.suppress(OSError):
            disk = os.statvfs(self.settings.log_dir)
            free, size = float(disk.f_bavail * disk.f_frsize), float(disk.f_blocks * disk.f_frsize)
        return DaemonFigures(tenants=tenants, config_problems=len(self.problems),
                             provisioning_failures=self.provisioned.failures,
                             log_disk_free_bytes=free, log_disk_size_bytes=size,
                             redis_usage={t: (u.keys, u.bytes) for t, u in self.redis_usage.items()})

    def metrics_token(self, tenant_id: str) -> str | None:
        path = self._tenant(tenant_id).metrics_token_file
        if path is None:
            return None
        try:
            token = path.read_text().strip()
        except OSError as e:
            # Fail closed: a token file that cannot be read must not open the endpoint.
            raise FailedPrecondition(f"cannot read the metrics token file {path}: {e.strerror}") from None
        if not token:
            raise FailedPrecondition(f"the metrics token file {path} is empty")
        return token

    def log_file(self, tenant_id: str, service: str, channel: str) -> str:
        self._names(tenant_id, service)
        if not channel or len(channel) > 40 or not set(channel) <= LOG_CHANNEL_CHARS:
            raise InvalidArgument("must be a channel name such as combined, error, webhook "
                                  "(lowercase letters, digits, _; at most 40)", field="channel")
        path = self.settings.log_dir / tenant_id / service / f"{channel}.log"
        if not path.exists():
            present = sorted(p.stem for p in path.parent.glob("*.log"))
            raise NotFound(f"no {channel!r} log for {tenant_id}/{service} yet; "
                           f"present: {', '.join(present) or 'none'}")
        return str(path)

    def watch_log(self, tenant_id: str, service: str, channel: str,
                  on_new_file: Callable[[], None]) -> Callable[[], None]:
        return self.supervisor.log_watchers.add(Path(self.log_file(tenant_id, service, channel)), on_new_file)

    def watch_events(self) -> AsyncIterator[EventView]:
        return self.events.watch()

    # ---- Operations: releases (oraclewad.deploy) ---------------------------------------------

    def releases(self) -> Sequence[ReleaseView]:
        return self.deployer.releases()

    async def install_release(self, path: str, version: str, *, find_links: Sequence[str],
                              share_packages: bool) -> ReleaseView:
        return await self.deployer.install(path, version, find_links=find_links,
                                           share_packages=share_packages)

    async def remove_release(self, version: str) -> str:
        return await self.deployer.remove(version)

    async def deploy(self, tenant_id: str, version: str, *, rollback: bool, options: SwapOptions,
                     report: Callable[[ProgressView], object]) -> DeployView:
        return await self.deployer.deploy(tenant_id, version, rollback=rollback, options=options,
                                          report=report)

    async def deploy_all(self, version: str, *, canary: int, max_parallel: int, dry_run: bool,
                         options: SwapOptions, report: Callable[[ProgressView], object]) -> DeployView:
        return await self.deployer.deploy_all(version, canary=canary, max_parallel=max_parallel,
                                              dry_run=dry_run, options=options, report=report)

    def history(self, tenant_id: str) -> list[HistoryView]:
        return self.deployer.history_of(tenant_id)

    def summary(self) -> str:
        """`2 tenants: 3 running, 1 starting; 1 config problem` (STATUS= and the daemon log)."""
        return views.summary(self.status(), len(self.tenants), len(self.problems))
