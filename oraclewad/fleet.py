"""The fleet: tenants.d turned into provisioned, supervised services, and the operator's verbs on it.

Every change (a hand edit plus reload, `oraclectl tenant add`, `tenant remove`) goes through
`reload()`, so tenants.d stays the single source of truth.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from oraclewad import contract, releases
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
from oraclewad.provision import Provisioner, usage
from oraclewad.provision.webhook_secrets import WebhookCredentials, WebhookSecrets
from oraclewad.scrape import ChildScraper, key_figures
from oraclewad.secretfiles import read_secret_file
from oraclewad.settings import Settings
from oraclewad.supervisor import ProcessSpec, Supervisor
from oraclewad.supervisor.process import can_switch_users
from oraclewad.supervisor.status import UP
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
from oraclewad.tenants.uids import UidBook, closed_to_others

log = logging.getLogger("oraclewad.fleet")
PROGRAMS = "programs"
REASSERT_EVERY = 30.0      # seconds between two automatic re-provisionings of one tenant
SPAWNED = ("starting", "running", "unhealthy", "backoff", "degraded")
LOG_CHANNEL_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
SERVICES_PACKAGE = Path(__file__).parent / "services"
SERVICE_CALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SERVICE_CALL_PATH = re.compile(r"/[\x21-\x7e]{0,2047}")
SERVICE_CALL_MAX_BYTES = 4 * 1024 * 1024 - 4096  # under gRPC's default message size
log = logging.getLogger("oraclewad.fleet")


def migrations_dir(service: str) -> Path:
    # Read as files, not imported: the daemon never imports the services it runs.
    return SERVICES_PACKAGE / service / "migrations"


@dataclass
class _Provisioning:
    """Where one tenant's databases and users stand."""

    done: bool = False
    status: str = "provisioning"
    scope: trio.CancelScope | None = None


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
        self.provisioning: dict[str, _Provisioning] = {}
        self.provisioning_failures = 0      # attempts that failed or found a server unavailable
        self.scraper = ChildScraper(self.admin_socket, settings.metrics_child_timeout)
        self.book = PortBook(settings.state_dir / "ports.json", settings.port_range, settings.bind_host)
        self.shop_secrets = WebhookSecrets(settings.secrets_dir)
        self.uids: dict[str, int] = {}
        self.uid_book: UidBook | None = None
        if settings.uid_range is not None:
            if can_switch_users():
                self.uid_book = UidBook(settings.state_dir / "uids.json", settings.uid_range)
            else:
                log.warning("tenants share the daemon's user (uid %d): without CAP_SETUID and "
                            "CAP_SETGID it cannot give each tenant its own; run it from "
                            "systemd/oraclewad.service (or as root) to separate them", os.getuid())
        self._release_closed: dict[str, str | None] = {}
        self.redis_usage: dict[str, usage.Usage] = {}
        self._lock = trio.Lock()
        self.deployer = Deployer(self)
        self._reasserted: dict[str, float] = {}

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
            for key, check in (("release", self._release), ("evolution.api_key_file", self._evolution_key)):
                try:
                    check(tenant)
                except OracleError as e:
                    problems.append(Problem(str(tenant.source), key, str(e)))
                    del runnable[tid]
                    break
        old = self.tenants
        self.tenants, self.ports, self.problems = runnable, ports, problems
        self.provisioner.role_count = sum(len(t.services) for t in runnable.values())
        for problem in problems:
            self._publish("", "", "problem", message=str(problem))

        for tid in set(old) - set(runnable):
            state = self.provisioning.pop(tid, None)
            if state and state.scope:
                state.scope.cancel()
        # A tenant needs provisioning when it is new or its set of services grew.
        pending = [t for tid, t in runnable.items()
                   if tid not in self.provisioning or not self.provisioning[tid].done
                   or {s.name for s in t.services} - {s.name for s in old[tid].services}]
        # Every known tenant has a provisioning state before the next checkpoint: a call that
        # arrives while the first attempts run finds "provisioning", never a missing key.
        for tenant in pending:
            self.provisioning.setdefault(tenant.id, _Provisioning())
        async with trio.open_nursery() as first_attempts:
            for tenant in pending:
                first_attempts.start_soon(self._first_provision, tenant)

        changes = self.supervisor.apply(self._specs())
        view = ReloadView(added=tuple(sorted(set(runnable) - set(old))),
                          removed=tuple(sorted(set(old) - set(runnable))),
                          restarted=tuple(changes.restarted), unchanged=tuple(changes.unchanged),
                          problems=tuple(str(p) for p in problems))
        self._publish("", "", "reload", message=view.describe())
        return view

    async def _first_provision(self, tenant: Tenant) -> None:
        state = self.provisioning.setdefault(tenant.id, _Provisioning())
        if state.scope is not None:
            state.scope.cancel()
        try:
            await self._provision(tenant)
        except Unavailable as e:
            self.provisioning_failures += 1
            state.status = f"UNAVAILABLE: {e}"
            self._publish(tenant.id, "", "provision", message=state.status)
            self.nursery.start_soon(self._retry_provision, tenant, state)
        except OracleError as e:
            self.provisioning_failures += 1
            state.status = f"FAILED: {e}"
            self._publish(tenant.id, "", "provision", message=state.status)
        else:
            state.done, state.status = True, "provisioned"

    async def _provision(self, tenant: Tenant) -> None:
        services = [s.name for s in tenant.services]
        await self.provisioner.provision(tenant.id, services, {s: migrations_dir(s) for s in services})

    async def _retry_provision(self, tenant: Tenant, state: _Provisioning) -> None:
        delay = 1.0
        with trio.CancelScope() as state.scope:
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, 60.0)
                try:
                    await self._provision(tenant)
                except Unavailable as e:
                    self.provisioning_failures += 1
                    state.status = f"UNAVAILABLE: {e}"
                    continue
                except OracleError as e:
                    self.provisioning_failures += 1
                    state.status = f"FAILED: {e}"
                    return
                state.done, state.status = True, "provisioned"
                self._publish(tenant.id, "", "provision", message="provisioned")
                async with self._lock:
                    if self.tenants.get(tenant.id) is tenant:
                        self.supervisor.apply(self._specs())
                return

    def _specs(self) -> dict[str, ProcessSpec]:
        specs: dict[str, ProcessSpec] = {}
        for program in self.settings.programs:
            name = unit_name(PROGRAMS, program.name)
            specs[name] = ProcessSpec(
                name=name, group=PROGRAMS, argv=program.command, env=program.env, cwd=program.cwd,
                listen=(self.settings.bind_host, program.port) if program.port else None,
                notify=program.notify, config=None, admin_socket=False,
                log_dir=self.settings.log_dir / PROGRAMS / program.name, policy=program.policy,
                labels=(("port", str(program.port)),) if program.port else ())
        for tenant in self.tenants.values():
            if not self.provisioning.get(tenant.id, _Provisioning()).done:
                continue
            for svc in tenant.services:
                spec = self._service_spec(tenant, svc.name)
                specs[spec.name] = spec
        return specs

    def _service_spec(self, tenant: Tenant, service: str) -> ProcessSpec:
        svc = tenant.service(service)
        assert svc is not None
        name = unit_name(tenant.id, service)
        port = self.ports[name]
        release = self._release(tenant)
        config: dict[str, Any] = {
            "tenant": tenant.id, "service": service, "display_name": tenant.name,
            "release": release.version,
            "http": {"host": self.settings.bind_host, "port": port},
            **self.shop_secrets.get(tenant.id).child_config(time.time()),
            "evolution": {"url": tenant.evolution.url, "api_key": self._evolution_key(tenant),
                          "api_version": tenant.evolution.api_version,
                          # Where this service's instances post their events, and the key that
                          # signs them (Evolution's headers.jwt_key): see docs/evolution.md.
                          "webhook_url": f"{self.settings.public_url}:{port}/webhooks/evolution",
                          "webhook_jwt_key": self._evolution_webhook_key(tenant.id, service)},
            "instances": list(svc.instances),
            "antiban": tenant.antiban, "templates": tenant.templates, "recovery": tenant.recovery,
            **self.provisioner.child_config_fragment(tenant.id, service),
        }
        return ProcessSpec(
            name=name, group=tenant.id,
            # -P: the daemon's working directory (a source checkout, say) must not shadow the
            # release's own package.
            argv=(release.python, "-P", "-m", f"oraclewad.services.{service}"),
            env=(("OWA_TENANT", tenant.id), ("OWA_SERVICE", service)),
            listen=(self.settings.bind_host, port), notify=True,
            config=json.dumps(config, sort_keys=True),
            log_dir=self.settings.log_dir / tenant.id / service, policy=svc.policy,
            user=self._user(tenant, release),
            private_tmp=self.settings.shared_dir / "tmp" / id_key(tenant.id),
            labels=(("release", release.version), ("port", str(port))))

    def _user(self, tenant: Tenant, release: releases.Release) -> tuple[int, int] | None:
        """The tenant's own uid/gid, or None (the daemon's) when its release is closed to it."""
        uid = self.uids.get(tenant.id)
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

    def _release(self, tenant: Tenant) -> releases.Release:
        return releases.resolve(self.settings.releases_dir, tenant.release or self.settings.default_release)

    def _secret_path(self, tenant_id: str, kind: str) -> Path:
        return self.settings.secrets_dir / f"{id_key(tenant_id)}.{kind}"

    def _evolution_webhook_key(self, tenant_id: str, service: str) -> str:
        path = self._secret_path(tenant_id, f"{service}.evolution-webhook.key")
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            value = secrets.token_urlsafe(32)
            write_atomic(path, value.encode() + b"\n", 0o600)
            return value

    def _evolution_key(self, tenant: Tenant) -> str:
        path = tenant.evolution.api_key_file
        if path is None:
            return ""
        try:
            return read_secret_file(path, state_dir=self.settings.state_dir,
                                    own=[self._secret_path(tenant.id, "evolution.key")])
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise FailedPrecondition(f"the Evolution API key file: {why}") from None

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
                    if event.state in ("backoff", "degraded") and group in self.tenants:
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
                await self._provision(tenant)
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
            state = self.provisioning.setdefault(tenant.id, _Provisioning())
            await self._provision(tenant)
            state.done, state.status = True, "provisioned"
            lines = [f"provisioned {', '.join(tenant.unit_names())}: databases, roles and passwords, "
                     "Redis users, migrations"]
            self.supervisor.apply(self._specs())
        retry = [s.name for s in self.supervisor.snapshot()
                 if s.name in tenant.unit_names() and s.state in ("backoff", "degraded")]
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
                key_file = self._secret_path(new.id, "evolution.key")
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
                if snap.state == "stopped" and snap.name not in held_down:
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
                    await self.supervisor.wait_state(name, ("running", "unhealthy"), math.inf)
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
        views = []
        for tid in sorted(self._removed_ids(), key=str.lower):
            kept: list[str] = []
            size = 0
            try:
                for what, nbytes in await self.provisioner.kept(tid, SERVICES):
                    kept.append(f"{what} {_size(nbytes)}" if nbytes else what)
                    size += nbytes
            except Unavailable as e:
                kept.append(f"databases and Redis keys: unknown ({e})")
            logs = self.settings.log_dir / tid
            if logs.is_dir():
                nbytes = sum(p.stat().st_size for p in logs.rglob("*") if p.is_file())
                kept.append(f"logs {logs} {_size(nbytes)}")
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
            views.append(RemovedView(tid, retired_at(files[-1]) if files else None, size, tuple(kept)))
        return views

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
        ports = {s.name: self.ports[unit_name(tenant.id, s.name)] for s in tenant.services}
        recovery_port = ports.get("recovery")
        webhook = f"{self.settings.public_url}:{recovery_port}/webhooks/orders" if recovery_port else ""
        state = self.provisioning.get(tenant.id, _Provisioning())
        return TenantView(
            id=tenant.id, name=tenant.name, services=tuple(ports), release=self._release(tenant).version,
            ports=ports, webhook_url=webhook,
            secrets_file=str(self.provisioner.secrets_path(tenant.id)),
            source_file=str(tenant.source), provisioned=state.done, states=tuple(states))

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
        now = time.time()
        return WebhookSecretsView(
            tenant=tenant.id,
            webhook_url=f"{self.settings.public_url}:{port}/webhooks/orders" if port else "",
            secret=creds.current, static_token=creds.token,
            static_token_enabled=bool(tenant.recovery.get("static_token")),
            previous_until=tuple(until for _, _, until in creds.previous if until > now),
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
        by_name = {s.name: s for s in self.supervisor.snapshot()}
        views = []
        for tid, tenant in sorted(self.tenants.items(), key=lambda kv: kv[0].lower()):
            if tenant_id not in (None, tid):
                continue
            prov = self.provisioning.get(tid, _Provisioning())
            release = self._release(tenant).version
            for svc in tenant.services:
                name = unit_name(tid, svc.name)
                snap = by_name.get(name)
                if snap is None:
                    views.append(ServiceView(tid, svc.name, "unavailable" if not prov.done else "pending",
                                             None, None, 0, False, self.ports.get(name), release,
                                             prov.status))
                    continue
                # The release of the process serving now (each service swaps on its own).
                running = dict(snap.labels).get("release", release)
                views.append(ServiceView(tid, svc.name, snap.state, snap.pid, snap.uptime, snap.restarts,
                                         snap.ready, self.ports.get(name), running, _message(snap)))
        if tenant_id is None:
            # A broken tenant file is skipped, not hidden: one row per file until it is fixed,
            # its problems one per line.
            by_file: dict[Path, list[str]] = {}
            for problem in self.problems:
                source = Path(problem.source)
                if source.parent == self.settings.tenants_dir and source.stem not in self.tenants:
                    by_file.setdefault(source, []).append(
                        f"{problem.key}: {problem.message}" if problem.key else problem.message)
            for source, lines in by_file.items():
                views.append(ServiceView(source.stem, "", "invalid", None, None, 0, False, None, "",
                                         "\n".join(lines)))
        if tenant_id in (None, PROGRAMS):
            for snap in by_name.values():
                if snap.group == PROGRAMS:
                    labels = dict(snap.labels)
                    views.append(ServiceView(PROGRAMS, snap.name.partition("/")[2], snap.state, snap.pid,
                                             snap.uptime, snap.restarts, snap.ready,
                                             int(labels["port"]) if "port" in labels else None, "",
                                             _message(snap)))
        return views

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

    async def _each(self, verb: str, tenant_id: str, service: str | None) -> list[ServiceView]:
        names = self._names(tenant_id, service)
        state = self.provisioning.get(tenant_id, _Provisioning())
        if tenant_id != PROGRAMS and not state.done:
            raise Unavailable(f"tenant {tenant_id!r} is not provisioned yet: {state.status}")
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(getattr(self.supervisor, verb), name)
        return [v for v in self.status(tenant_id) if service in (None, v.service)]

    async def start(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each("start", tenant_id, service)

    async def stop(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each("stop", tenant_id, service)

    async def restart(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each("restart", tenant_id, service)

    async def health(self, tenant_id: str | None = None) -> list[HealthView]:
        views = [v for v in self.status(tenant_id) if v.tenant != PROGRAMS]
        results: dict[int, HealthView] = {}

        async def probe(i: int, view: ServiceView) -> None:
            results[i] = await self._probe(view)

        async with trio.open_nursery() as nursery:
            for i, view in enumerate(views):
                nursery.start_soon(probe, i, view)
        return [results[i] for i in range(len(views))]

    def admin_socket(self, tenant_id: str, service: str) -> str:
        # The serving process's: during and after a swap the two processes' sockets alternate.
        path = self.supervisor.admin_path(unit_name(tenant_id, service))
        return str(path or self.settings.run_dir / "admin" / f"{tenant_id}-{service}.sock")

    async def _probe(self, view: ServiceView) -> HealthView:
        if view.state == "unavailable":
            return HealthView(view.tenant, view.service, "unavailable", detail=view.message)
        if view.state in ("stopped", "stopping"):
            return HealthView(view.tenant, view.service, "stopped", detail=view.state)
        if not view.ready and view.state != "unhealthy":
            return HealthView(view.tenant, view.service, "failing",
                              detail=f"{view.state}{': ' + view.message if view.message else ''}")
        # An unhealthy service still answers: its own checks say which part fails (and, for its
        # instances, each one's state).
        # verify=False: plain HTTP on a unix socket; the CA bundle would cost ~60 ms per probe.
        socket_path = self.admin_socket(view.tenant, view.service)
        transport = httpx.AsyncHTTPTransport(uds=socket_path, verify=False)
        try:
            async with httpx.AsyncClient(transport=transport, timeout=3.0, verify=False,
                                         trust_env=False) as client:
                response = await client.get("http://child/healthz")
            body = response.json()
        except (httpx.HTTPError, ValueError) as e:
            return HealthView(view.tenant, view.service, "failing",
                              detail=f"health endpoint did not answer: {e.__class__.__name__}")
        return HealthView(view.tenant, view.service, str(body.get("status", "failing")),
                          checks=body.get("checks", {}), detail="")

    async def service_call(self, tenant_id: str, service: str, method: str, path: str, body_json: str,
                           timeout: float) -> ServiceCallView:
        """A thin router: the service owns its API; the answer goes back as the service wrote it."""
        if tenant_id == PROGRAMS:
            raise InvalidArgument("host programs have no admin API", field="tenant")
        [name] = self._names(tenant_id, service)
        method = method.upper() or "GET"
        if method not in SERVICE_CALL_METHODS:
            raise InvalidArgument(f"must be one of {', '.join(SERVICE_CALL_METHODS)}", field="method")
        if not SERVICE_CALL_PATH.fullmatch(path):
            raise InvalidArgument("must be an absolute path such as /instances (no spaces, at most 2048 "
                                  "characters)", field="path")
        if len(body_json) > SERVICE_CALL_MAX_BYTES:
            raise InvalidArgument(f"is larger than {SERVICE_CALL_MAX_BYTES} bytes", field="body_json")
        [view] = [v for v in self.status(tenant_id) if v.service == service]
        # Unhealthy services answer too: pairing an instance is how one that cannot send heals.
        if not view.ready and view.state != "unhealthy":
            raise Unavailable(f"{name} is {view.state}{': ' + view.message if view.message else ''}; "
                              f"`oraclectl status {tenant_id}` shows why")
        transport = httpx.AsyncHTTPTransport(uds=str(self.admin_socket(tenant_id, service)))
        headers = {"content-type": "application/json"} if body_json else {}
        try:
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client, \
                    client.stream(method, f"http://{service}{path}", content=body_json.encode() or None,
                                  headers=headers) as response:
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > SERVICE_CALL_MAX_BYTES:
                        raise Unavailable(f"{name} answered more than {SERVICE_CALL_MAX_BYTES} bytes")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise Unavailable(f"{name} did not answer {method} {path} within {timeout:g}s") from None
        except httpx.HTTPError as e:
            raise Unavailable(f"{name}'s admin socket did not answer: {e.__class__.__name__}") from None
        return ServiceCallView(response.status_code, b"".join(chunks).decode("utf-8", "replace"))

    async def metrics(self, tenant_id: str | None = None) -> list[MetricsView]:
        snaps = {s.name: s for s in self.supervisor.snapshot()}
        views = [v for v in self.status(tenant_id) if v.state != "invalid"]
        scraped = await self.scraper.scrape([(v.tenant, v.service) for v in views
                                             if v.pid and v.state in UP and v.tenant != PROGRAMS])
        if tenant_id is None:
            await self.scraper.forget_others((v.tenant, v.service) for v in views)

        def read() -> list[Mapping[str, float]]:
            # /proc of 200 children and parsing their metrics: off the event loop.
            self.scraper.parse(scraped.values())
            return [_proc_figures(v.pid) if v.pid else {} for v in views]

        procs = await trio.to_thread.run_sync(read)
        result = []
        for view, proc in zip(views, procs, strict=True):
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
        services: dict[str, list[ServiceView]] = {}
        for view in self.status():
            if view.tenant != PROGRAMS:
                services.setdefault(view.tenant, []).append(view)
        tenants = dict.fromkeys(TENANT_STATES, 0)
        for views in services.values():
            tenants[_tenant_state(views)] += 1
        free = size = None
        with contextlib.suppress(OSError):
            disk = os.statvfs(self.settings.log_dir)
            free, size = float(disk.f_bavail * disk.f_frsize), float(disk.f_blocks * disk.f_frsize)
        return DaemonFigures(tenants=tenants, config_problems=len(self.problems),
                             provisioning_failures=self.provisioning_failures,
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
        counts: dict[str, int] = {}
        unhealthy: list[ServiceView] = []
        for view in self.status():
            if view.state == "invalid":   # invalid files are counted as config problems
                continue
            counts[view.state] = counts.get(view.state, 0) + 1
            if view.state == "unhealthy":
                unhealthy.append(view)
        parts = [f"{n} {state}" for state, n in sorted(counts.items())]
        text = f"{plural(len(self.tenants), 'tenant')}: " + (", ".join(parts) or "no services") + (
            f"; {plural(len(self.problems), 'config problem')}" if self.problems else "")
        if unhealthy:
            # Which check fails is what an operator reading `systemctl status` needs first.
            first = unhealthy[0]
            text += f"; unhealthy: {first.tenant}/{first.service} ({first.message[:120]})"
            if len(unhealthy) > 1:
                text += f" and {len(unhealthy) - 1} more"
        return text


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _message(snap: Any) -> str:
    """What the operator should read about a service: a running one's last exit is history; a
    spawn = "fork" service that had to be exec'd says why."""
    text = snap.message or ("" if snap.state == "running" else snap.last_exit)
    note = getattr(snap, "spawn_note", "")
    return f"{text}; {note}" if text and note else (text or note)


TENANT_STATES = ("ok", "degraded", "stopped", "provisioning", "invalid")


def _tenant_state(views: list[ServiceView]) -> str:
    states = {v.state for v in views}
    if "invalid" in states:
        return "invalid"
    if states & {"unavailable", "pending"}:
        return "provisioning"
    if all(v.state == "running" and v.ready for v in views):
        return "ok"
    if states <= {"stopped", "stopping"}:
        return "stopped"
    return "degraded"


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _proc_figures(pid: int) -> Mapping[str, float]:
    """RSS, PSS and CPU seconds of a child from /proc (it may be gone by the time we look)."""
    figures: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        figures["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / ticks
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        figures["rss_bytes"] = float(rss_pages * os.sysconf("SC_PAGE_SIZE"))
        # PSS shares each shared page among its users: the honest "what this child costs".
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                figures["pss_bytes"] = float(int(line.split()[1]) * 1024)
                break
    return figures
