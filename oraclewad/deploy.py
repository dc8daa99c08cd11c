"""The release verbs of the fleet: deploy, rollback, fleet rollout, history, install and remove.

A tenant's swap, in order: refuse what would be unsafe (a release that cannot read the schema
now in the database), apply the new release's migrations (one transaction per service), stage
and gate the new processes (oraclewad.rollout), write the tenant file's pin, promote. Any failure
before the pin is written leaves the tenant exactly as it was (auto-revert) and is recorded.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import trio

from oraclewad import contract, migrations, releases
from oraclewad.errors import FailedPrecondition, InvalidArgument, OracleError
from oraclewad.operations import DeployView, HistoryView, ProgressView, ReleaseView, SwapOptions
from oraclewad.releases import Release, Swap
from oraclewad.rollout import Gate, Plan, Swapper, batches
from oraclewad.tenants.ids import unit_name
from oraclewad.tenants.model import Tenant

if TYPE_CHECKING:
    from oraclewad.fleet import Fleet

log = logging.getLogger("oraclewad.releases")

Report = Callable[[ProgressView], object]
BUILD_TIMEOUT = 900.0


def _all_applied(directory: Path, applied: Sequence[migrations.Applied]) -> bool:
    """Whether the database holds every migration in `directory` (same version and name)."""
    try:
        wanted = migrations.discover(directory)
    except (OSError, ValueError):
        return False        # let migrate() report it
    held = {(a.version, a.name) for a in applied}
    return all((m.version, m.name) in held for m in wanted)


def _admin_client(path: str, timeout: float) -> httpx.AsyncClient:
    # verify=False: plain HTTP on a unix socket. The default loads the CA bundle, about 170 ms
    # of CPU per client on a loaded machine, paid on every health probe of a swap's gate.
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=path, verify=False), timeout=timeout,
                             verify=False, trust_env=False)


async def probe_admin(path: str) -> tuple[str, str]:
    """A process's own /healthz on its admin socket: (status, detail)."""
    try:
        async with _admin_client(path, 3.0) as client:
            response = await client.get("http://child/healthz")
        body = response.json()
    except (httpx.HTTPError, ValueError) as e:
        return "failing", f"health endpoint did not answer: {e.__class__.__name__}"
    status = str(body.get("status", "failing"))
    failing = [f"{k}: {v.get('detail', '')}" for k, v in (body.get("checks") or {}).items()
               if isinstance(v, dict) and not v.get("ok", True)]
    return status, "; ".join(failing)


async def accept_admin(path: str) -> str | None:
    """Tell a swap's new process to start accepting on the shared socket: None once it does.
    A release from before this step answers 404 and is accepting already."""
    try:
        async with _admin_client(path, 10.0) as client:
            response = await client.post(f"http://child{contract.ADMIN_ACCEPT_PATH}")
    except httpx.HTTPError as e:
        return f"its admin socket did not answer ({e.__class__.__name__})"
    if response.status_code in (200, 404):
        return None
    return f"HTTP {response.status_code} {response.text[:200]}"


def pin_release(path: Path, version: str) -> None:
    """Set the top-level `release = "..."` of a tenant file, keeping every other line as written."""
    import tomllib

    from oraclewad.files import write_atomic

    text = path.read_text()
    before = tomllib.loads(text)
    lines = text.splitlines(keepends=True)
    new_line = f'release = "{version}"\n'
    first_table = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    for i in range(first_table):
        key = lines[i].split("=", 1)[0].strip()
        if "=" in lines[i] and key == "release":
            lines[i] = new_line
            break
    else:
        if first_table and not lines[first_table - 1].endswith("\n"):
            lines[first_table - 1] += "\n"
        lines.insert(first_table, new_line)
    result = "".join(lines)
    after = tomllib.loads(result)
    if after.get("release") != version or {k: v for k, v in after.items() if k != "release"} != {
            k: v for k, v in before.items() if k != "release"}:
        raise FailedPrecondition(f"cannot change the release pin of {path} safely (an unusual layout): "
                                 f'set release = "{version}" by hand and run `oraclectl reload`')
    write_atomic(path, result.encode(), path.stat().st_mode & 0o777)


class Deployer:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.history = releases.History(fleet.settings.state_dir / "history")
        self._busy: set[str] = set()           # tenants in a swap

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.fleet.settings

    # ---- registry ----------------------------------------------------------------------------

    def releases(self) -> list[ReleaseView]:
        users: dict[str, list[str]] = {}
        for tenant in self.fleet.tenants.values():
            users.setdefault(self._current(tenant), []).append(tenant.id)
        views = []
        for version in releases.installed(self.settings.releases_dir):
            try:
                rel = releases.resolve(self.settings.releases_dir, version)
            except OracleError:
                continue
            views.append(self._view(rel, users.get(rel.version, [])))
        return views

    def _view(self, rel: Release, tenants: Sequence[str]) -> ReleaseView:
        return ReleaseView(version=rel.version, python=rel.python, schema=dict(rel.schema or {}),
                           tenants=tuple(sorted(tenants, key=str.lower)), path=str(rel.path or ""))

    def _current(self, tenant: Tenant) -> str:
        return self.fleet.spec_builder.release_version(tenant)   # one rule for the pinned release

    async def install(self, path: str, version: str, *, find_links: Sequence[str],
                      share_packages: bool) -> ReleaseView:
        if not path:
            raise InvalidArgument("is required: a wheel (.whl) or a source folder", field="path")
        target, steps = releases.build_plan(self.settings.releases_dir, Path(path), version,
                                            find_links=find_links, share_packages=share_packages)
        version = releases.check_version(version)
        if target.exists():
            raise FailedPrecondition(f"{target} exists but holds no release.toml (a failed install?): "
                                     "delete it and retry")
        output = ""
        try:
            for i, step in enumerate(steps):
                with trio.fail_after(BUILD_TIMEOUT):
                    result = await trio.run_process(list(step.argv), capture_stdout=True, capture_stderr=True,
                                                    check=False)
                if result.returncode != 0:
                    err = (result.stderr or result.stdout).decode(errors="replace").strip()[-1500:]
                    raise FailedPrecondition(f"release {version}: {step.what} failed (exit "
                                             f"{result.returncode}): {err}")
                if i == 0 and share_packages:
                    releases.share_site_packages(target)
                output = result.stdout.decode(errors="replace")
            rel = releases.finish_build(target, version, output, Path(path).resolve())
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(target, ignore_errors=True))
            raise
        self.fleet._publish("", "", "release", message=f"installed release {version} at {target}")
        return self._view(rel, [])

    async def remove(self, version: str) -> str:
        version = releases.check_version(version)
        users = [t.id for t in self.fleet.tenants.values() if self._current(t) == version]
        # A tenant whose file pins it but which is not running (a broken file) counts too.
        target = await trio.to_thread.run_sync(releases.remove, self.settings.releases_dir, version, users)
        self.fleet._publish("", "", "release", message=f"removed release {version}")
        return f"removed release {version} ({target})"

    # ---- history -------------------------------------------------------------------------------

    def history_of(self, tenant_id: str) -> list[HistoryView]:
        tenant = self.fleet._tenant(tenant_id)
        return [HistoryView(e.ts, e.service, e.from_version, e.to_version, e.result, e.reason, e.duration_s,
                            e.stable, e.action) for e in self.history.entries(tenant.id)]

    # ---- swaps ---------------------------------------------------------------------------------

    def _gate(self, options: SwapOptions) -> Gate:
        cfg = self.settings.releases
        for name in ("healthy_deadline", "min_healthy_time"):
            value = getattr(options, name)
            if value is not None and value < 0:
                raise InvalidArgument("must be 0 or more seconds", field=name)
        return Gate(healthy_deadline=options.healthy_deadline or cfg.healthy_deadline,
                    min_healthy_time=cfg.min_healthy_time if options.min_healthy_time is None
                    else options.min_healthy_time)

    async def deploy(self, tenant_id: str, version: str, *, rollback: bool, options: SwapOptions,
                     report: Report) -> DeployView:
        tenant = self.fleet._tenant(tenant_id)
        gate = self._gate(options)
        current = self._current(tenant)
        if version:
            version = releases.check_version(version)
        elif rollback:
            found = self.history.last_stable_before(tenant.id, current)
            if found is None:
                raise FailedPrecondition(f"{tenant.id} has no earlier stable release in its history "
                                         f"(it runs {current}): name one, e.g. `oraclectl rollback "
                                         f"{tenant.id} VERSION` (`oraclectl releases` lists them)")
            version = found
        else:
            raise InvalidArgument("is required", field="version")
        target = releases.resolve(self.settings.releases_dir, version)
        return await self._swap_tenant(tenant, target, "rollback" if rollback else "deploy", gate, report)

    async def _swap_tenant(self, tenant: Tenant, target: Release, action: str, gate: Gate,
                           report: Report) -> DeployView:
        fleet = self.fleet
        current = self._current(tenant)
        if target.version == current:
            report(ProgressView(tenant.id, "", "done", message=f"already on {current}"))
            return DeployView(tenant.id, current, current, f"already on {current}: nothing to do")
        if tenant.id in self._busy:
            raise FailedPrecondition(f"{tenant.id} is already being swapped: wait for that to finish")
        if not fleet.provisioning.get(tenant.id) or not fleet.provisioning[tenant.id].done:
            raise FailedPrecondition(f"{tenant.id} is not provisioned yet; deploy once `oraclectl status "
                                     f"{tenant.id}` shows it running")
        self._busy.add(tenant.id)
        started, t0 = time.time(), trio.current_time()
        services = [s.name for s in tenant.services]
        entries: list[Swap] = []

        def record(result: str, reasons: dict[str, str], stable: bool = False) -> None:
            duration = round(trio.current_time() - t0, 3)
            for svc in services:
                entries.append(Swap(ts=started, service=svc, from_version=current, to_version=target.version,
                                    result=result, reason=reasons.get(svc, ""), duration_s=duration,
                                    stable=stable, action=action))

        try:
            report(ProgressView(tenant.id, "", "plan", message=f"{action} {current} -> {target.version}: "
                                f"{', '.join(services)}", from_version=current, to_version=target.version))
            applied = await self._applied(tenant, services)
            try:
                self._check_schema(tenant, target, services, applied, report)
            except FailedPrecondition as e:
                record("refused", dict.fromkeys(services, str(e)))
                raise
            moved = await self._swap_services(tenant, target, services, current, gate, report, record,
                                              applied)
            report(ProgressView(tenant.id, "", "done", round(trio.current_time() - t0, 3),
                                message=f"{tenant.id} runs {target.version} "
                                        f"({', '.join(moved) or 'pin only'})",
                                from_version=current, to_version=target.version))
            return DeployView(tenant.id, current, target.version,
                              f"{', '.join(moved) or 'no running service'} on {target.version} after "
                              f"{trio.current_time() - t0:.1f} s")
        finally:
            self._busy.discard(tenant.id)
            if entries:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.history.add, tenant.id, entries)
                for entry in entries:
                    fleet._publish(tenant.id, entry.service, "release",
                                   message=f"{entry.action} {entry.from_version} -> {entry.to_version}: "
                                           f"{entry.result}{': ' + entry.reason if entry.reason else ''}")

    async def _applied(self, tenant: Tenant, services: list[str]) -> dict[str, list[migrations.Applied]]:
        """The migrations each service's database holds, read side by side (a connection each)."""
        applied: dict[str, list[migrations.Applied]] = {}

        async def one(svc: str) -> None:
            applied[svc] = await self.fleet.provisioner.schema(tenant.id, svc)

        async with trio.open_nursery() as nursery:
            for svc in services:
                nursery.start_soon(one, svc)
        return applied

    def _check_schema(self, tenant: Tenant, target: Release, services: list[str],
                      applied_by: dict[str, list[migrations.Applied]], report: Report) -> None:
        """Refuse a release that cannot read what the databases hold now."""
        if target.schema is None:
            report(ProgressView(tenant.id, "", "schema", message=f"release {target.version} declares no "
                                "schema versions: not checked"))
            return
        blocking: list[str] = []
        for svc in services:
            reads = target.schema.get(svc, 0)
            applied = applied_by[svc]
            ahead = [a for a in applied if a.version > reads]
            bad = [a for a in ahead if not a.backward_compatible]
            if bad:
                blocking.append(f"{svc}: {', '.join(f'{a.version:04d}_{a.name}' for a in bad)}")
            elif ahead:
                report(ProgressView(tenant.id, svc, "schema", message=f"{len(ahead)} newer migration(s) "
                                    f"declared backward compatible: {target.version} can read them"))
        if blocking:
            raise FailedPrecondition(
                f"release {target.version} cannot read the schema {tenant.id} has now: migrations "
                f"{'; '.join(blocking)} came later and are not declared backward compatible. Deploy a "
                "release that has them (or restore the database from a backup first)")

    async def _swap_services(self, tenant: Tenant, target: Release, services: list[str], current: str,
                             gate: Gate, report: Report, record: Callable[..., None],
                             applied: dict[str, list[migrations.Applied]]) -> list[str]:
        fleet = self.fleet
        sup = fleet.supervisor
        new_tenant = replace(tenant, release=target.version)
        # Migrations first (the new release's files, one transaction per service).
        for svc in services:
            directory = target.migrations.get(svc)
            if directory is None or await trio.to_thread.run_sync(_all_applied, directory, applied[svc]):
                continue        # a rollback, or a deploy back and forth: nothing to connect for
            report(ProgressView(tenant.id, svc, "migrating",
                                message=f"applying {target.version}'s migrations"))
            try:
                done = await fleet.provisioner.migrate(tenant.id, svc, directory)
            except OracleError as e:
                why = f"migration failed, database unchanged: {e}"
                record("reverted", {svc: why})
                report(ProgressView(tenant.id, svc, "reverted", message=why))
                raise FailedPrecondition(f"{tenant.id}: {svc}: {why}; still on {current}") from None
            if done:
                report(ProgressView(tenant.id, svc, "migrating", message=f"applied {done}"))

        plans, pin_only = [], []
        for svc in services:
            name = unit_name(tenant.id, svc)
            status = sup.status(name)
            spec = fleet._service_spec(new_tenant, svc)
            if status.state in ("running", "unhealthy"):
                plans.append(Plan(name, svc, spec, current, target.version))
            elif name in sup.operator_stopped:
                pin_only.append(svc)
            elif status.state in ("backoff", "degraded") or (status.state == "starting" and status.restarts):
                # Crash-looping: no process to fall back on, and a fix is what it needs.
                plans.append(Plan(name, svc, spec, current, target.version, in_place=True))
            else:
                why = (f"is {status.state}{' (' + status.message + ')' if status.message else ''}: a swap "
                       "needs the old process running to fall back on; start it or wait")
                record("refused", {svc: why})
                raise FailedPrecondition(f"{tenant.id}: {svc} {why}")
        swapper = Swapper(sup, probe_admin, tenant.id, report, accept_admin)
        outcomes, cands = await swapper.stage_and_gate(plans, gate)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            await swapper.finish(outcomes, cands, promote=False)
            first = next((o for o in failed if not o.reason.startswith("stopped: another")), failed[0])
            reasons = {o.plan.service: o.reason or "reverted with the others" for o in outcomes}
            for o in outcomes:
                report(ProgressView(tenant.id, o.plan.service, "reverted", message=reasons[o.plan.service]))
            record("reverted", reasons)
            raise FailedPrecondition(f"{tenant.id}: {first.plan.service} on {target.version}: "
                                     f"{first.reason}; auto-reverted, still on {current}")
        async with fleet._lock:
            if fleet.tenants.get(tenant.id) != tenant:
                await swapper.finish(outcomes, cands, promote=False)
                record("reverted", dict.fromkeys(services, "the tenant file changed during the swap"))
                raise FailedPrecondition(f"{tenant.id}: the tenant file changed during the swap; "
                                         f"still on {current}: retry")
            try:
                await trio.to_thread.run_sync(pin_release, tenant.source, target.version)
            except (OSError, OracleError) as e:
                await swapper.finish(outcomes, cands, promote=False)
                record("reverted", dict.fromkeys(services, f"cannot write the pin: {e}"))
                raise FailedPrecondition(f"{tenant.id}: cannot write the release pin to {tenant.source}: "
                                         f"{e}; still on {current}") from None
            fleet.tenants[tenant.id] = replace(new_tenant, source=tenant.source)
            await swapper.finish(outcomes, cands, promote=True)
        lost = [o for o in outcomes if not o.ok]
        for o in outcomes:
            report(ProgressView(tenant.id, o.plan.service, "promoted" if o.ok else "failed",
                                round(o.finished - o.started, 3), message=o.reason or "old process stopped",
                                from_version=current, to_version=target.version))
        if pin_only:
            # Operator-stopped services take the new release when next started.
            fleet.supervisor.apply(fleet._specs())
        record("ok", {o.plan.service: o.reason for o in lost} | dict.fromkeys(pin_only, "stopped: pin only"),
               stable=not lost)
        return [o.plan.service for o in outcomes if o.ok]

    # ---- fleet rollout ---------------------------------------------------------------------

    async def deploy_all(self, version: str, *, canary: int, max_parallel: int, dry_run: bool,
                         options: SwapOptions, report: Report) -> DeployView:
        version = releases.check_version(version)
        target = releases.resolve(self.settings.releases_dir, version)
        gate = self._gate(options)
        if canary < 0:
            raise InvalidArgument("must be 0 or more", field="canary")
        if max_parallel < 0:
            raise InvalidArgument("must be 0 or more (0 means 1)", field="max_parallel")
        tenants = sorted(self.fleet.tenants.values(), key=lambda t: t.id.lower())
        todo = [t.id for t in tenants if self._current(t) != target.version]
        for t in tenants:
            if t.id not in todo:
                report(ProgressView(t.id, "", "skipped", message=f"already on {target.version}"))
        waves = batches(todo, canary, max_parallel or 1)
        for i, wave in enumerate(waves):
            kind = "canary" if i == 0 and canary else f"batch {i + (0 if canary else 1)}"
            report(ProgressView("", "", "plan", message=f"{kind}: {', '.join(wave)}",
                                to_version=target.version))
        if dry_run:
            return DeployView("", "", target.version, f"dry run: {len(todo)} tenant(s) would move to "
                              f"{target.version} in {len(waves)} step(s); nothing changed")
        done: list[str] = []
        failures: dict[str, str] = {}
        for wave in waves:
            async with trio.open_nursery() as nursery:
                for tid in wave:
                    nursery.start_soon(self._fleet_one, tid, target, gate, report, done, failures)
            if failures:
                break
        left = [t for t in todo if t not in done and t not in failures]
        summary = (f"{len(done)} moved to {target.version}" + (f" ({', '.join(done)})" if done else "")
                   + (f"; failed: {'; '.join(f'{t}: {r}' for t, r in failures.items())}" if failures else "")
                   + (f"; untouched: {', '.join(left)}" if left else ""))
        if failures:
            report(ProgressView("", "", "halted", message=summary, to_version=target.version))
            raise FailedPrecondition(f"rollout halted at the first failure: {summary}")
        return DeployView("", "", target.version, summary)

    async def _fleet_one(self, tenant_id: str, target: Release, gate: Gate, report: Report,
                         done: list[str], failures: dict[str, str]) -> None:
        try:
            tenant = self.fleet._tenant(tenant_id)
            await self._swap_tenant(tenant, target, "deploy", gate, report)
        except OracleError as e:
            failures[tenant_id] = str(e)
            report(ProgressView(tenant_id, "", "failed", message=str(e)))
        else:
            done.append(tenant_id)

