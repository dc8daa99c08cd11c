"""Status views: the fleet's state turned into the frozen views of oraclewad.operations.

Pure functions over what the fleet holds in memory (tenants, ports, provisioning states, the
supervisor's snapshot): no file reads, so they are safe on the trio thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from oraclewad.errors import Problem
from oraclewad.operations import ServiceView, TenantView, WebhookSecretsView
from oraclewad.provision.webhook_secrets import WebhookCredentials
from oraclewad.provisioning import Provisioning
from oraclewad.specs import PROGRAMS
from oraclewad.supervisor.status import ServiceStatus, State
from oraclewad.tenants.ids import unit_name
from oraclewad.tenants.model import Tenant

TENANT_STATES = ("ok", "degraded", "stopped", "provisioning", "invalid")   # a tenant's, for /metrics
PROBLEMS_PER_FILE = 20      # shown per invalid file; `oraclewad check` lists every one
PROBLEM_CHARS = 500         # a problem line longer than this is cut (a 200 KB key, say)
MAX_REPORTED = 200          # problem lines a reload reports in all


def service_views(tenants: Mapping[str, Tenant], ports: Mapping[str, int],
                  provisioning: Mapping[str, Provisioning], snapshot: Sequence[ServiceStatus],
                  problems: Sequence[Problem], tenants_dir: Path, release_version: Callable[[Tenant], str],
                  tenant_id: str | None = None) -> list[ServiceView]:
    """Every service of the fleet (or one tenant's, or the host programs'), tenants by id."""
    by_name = {s.name: s for s in snapshot}
    views = []
    for tid, tenant in sorted(tenants.items(), key=lambda kv: kv[0].lower()):
        if tenant_id not in (None, tid):
            continue
        prov = provisioning.get(tid, Provisioning())
        release = release_version(tenant)
        for svc in tenant.services:
            name = unit_name(tid, svc.name)
            snap = by_name.get(name)
            if snap is None:
                views.append(ServiceView(tid, svc.name, State.UNAVAILABLE if not prov.done else State.PENDING,
                                         None, None, 0, False, ports.get(name), release, prov.status))
                continue
            # The release of the process serving now (each service swaps on its own).
            running = dict(snap.labels).get("release", release)
            views.append(ServiceView(tid, svc.name, snap.state, snap.pid, snap.uptime, snap.restarts,
                                     snap.ready, ports.get(name), running, _message(snap)))
    if tenant_id is None:
        views += invalid_views(problems, tenants_dir, tenants)
    if tenant_id in (None, PROGRAMS):
        for snap in by_name.values():
            if snap.group == PROGRAMS:
                labels = dict(snap.labels)
                views.append(ServiceView(PROGRAMS, snap.name.partition("/")[2], snap.state, snap.pid,
                                         snap.uptime, snap.restarts, snap.ready,
                                         int(labels["port"]) if "port" in labels else None, "",
                                         _message(snap)))
    return views


def invalid_views(problems: Sequence[Problem], tenants_dir: Path,
                  tenants: Mapping[str, Tenant]) -> list[ServiceView]:
    """A broken tenant file is skipped, not hidden: one row per file until it is fixed, its
    problems one per line."""
    by_file: dict[Path, list[str]] = {}
    for problem in problems:
        source = Path(problem.source)
        if source.parent == tenants_dir and source.stem not in tenants:
            by_file.setdefault(source, []).append(
                f"{problem.key}: {problem.message}" if problem.key else problem.message)
    return [ServiceView(source.stem, "", State.INVALID, None, None, 0, False, None, "",
                        "\n".join(_first_lines(lines, PROBLEMS_PER_FILE)))
            for source, lines in by_file.items()]


def reported_problems(problems: Sequence[Problem]) -> tuple[str, ...]:
    """The problems a reload reports (its answer, events, the daemon log): the first few of each
    file, at most MAX_REPORTED in all, each line cut short. A 256 KiB file of unknown keys has
    20000 problems; all of them would make answers larger than the control plane may send."""
    by_file: dict[str, list[str]] = {}
    for problem in problems:
        by_file.setdefault(problem.source, []).append(str(problem))
    lines = [line for each in by_file.values() for line in _first_lines(each, PROBLEMS_PER_FILE)]
    if len(lines) > MAX_REPORTED:
        lines = [*lines[:MAX_REPORTED],
                 f"... and {len(lines) - MAX_REPORTED} more lines about {len(by_file)} files in all "
                 "(`oraclectl status` shows each invalid file, `oraclewad check` every problem)"]
    return tuple(lines)


def _first_lines(lines: Sequence[str], most: int) -> list[str]:
    cut = [line if len(line) <= PROBLEM_CHARS else line[:PROBLEM_CHARS - 3] + "..." for line in lines[:most]]
    if len(lines) > most:
        cut.append(f"... and {len(lines) - most} more problems (`oraclewad check` lists them all)")
    return cut


def tenant_view(tenant: Tenant, states: Sequence[ServiceView], ports: Mapping[str, int], *,
                public_url: str, release: str, secrets_file: str, provisioned: bool) -> TenantView:
    own = {s.name: ports[unit_name(tenant.id, s.name)] for s in tenant.services}
    recovery_port = own.get("recovery")
    webhook = f"{public_url}:{recovery_port}/webhooks/orders" if recovery_port else ""
    return TenantView(
        id=tenant.id, name=tenant.name, services=tuple(own), release=release, ports=own,
        webhook_url=webhook, secrets_file=secrets_file, source_file=str(tenant.source),
        provisioned=provisioned, states=tuple(states))


def secrets_view(tenant: Tenant, creds: WebhookCredentials, port: int | None, *, public_url: str,
                 file: str) -> WebhookSecretsView:
    now = time.time()
    return WebhookSecretsView(
        tenant=tenant.id,
        webhook_url=f"{public_url}:{port}/webhooks/orders" if port else "",
        secret=creds.current, static_token=creds.token,
        static_token_enabled=bool(tenant.recovery.get("static_token")),
        previous_until=tuple(until for _, _, until in creds.previous if until > now),
        file=file)


def tenant_counts(views: Sequence[ServiceView]) -> dict[str, int]:
    """Tenants by state (TENANT_STATES), for /metrics."""
    services: dict[str, list[ServiceView]] = {}
    for view in views:
        if view.tenant != PROGRAMS:
            services.setdefault(view.tenant, []).append(view)
    tenants = dict.fromkeys(TENANT_STATES, 0)
    for group in services.values():
        tenants[tenant_state(group)] += 1
    return tenants


def tenant_state(views: Sequence[ServiceView]) -> str:
    states = {v.state for v in views}
    if State.INVALID in states:
        return "invalid"
    if states & {State.UNAVAILABLE, State.PENDING}:
        return "provisioning"
    if all(v.state == State.RUNNING and v.ready for v in views):
        return "ok"
    if states <= {State.STOPPED, State.STOPPING}:
        return "stopped"
    return "degraded"


def summary(views: Sequence[ServiceView], tenants: int, problems: int) -> str:
    """`2 tenants: 3 running, 1 starting; 1 config problem` (STATUS= and the daemon log)."""
    counts: dict[str, int] = {}
    unhealthy: list[ServiceView] = []
    for view in views:
        if view.state == State.INVALID:   # invalid files are counted as config problems
            continue
        counts[view.state] = counts.get(view.state, 0) + 1
        if view.state == State.UNHEALTHY:
            unhealthy.append(view)
    parts = [f"{n} {state}" for state, n in sorted(counts.items())]
    text = f"{plural(tenants, 'tenant')}: " + (", ".join(parts) or "no services") + (
        f"; {plural(problems, 'config problem')}" if problems else "")
    if unhealthy:
        # Which check fails is what an operator reading `systemctl status` needs first.
        first = unhealthy[0]
        text += f"; unhealthy: {first.tenant}/{first.service} ({first.message[:120]})"
        if len(unhealthy) > 1:
            text += f" and {len(unhealthy) - 1} more"
    return text


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def size_text(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _message(snap: ServiceStatus) -> str:
    """What the operator should read about a service: a running one's last exit is history; a
    spawn = "fork" service that had to be exec'd says why."""
    text = snap.message or ("" if snap.state == State.RUNNING else snap.last_exit)
    note = snap.spawn_note
    return f"{text}; {note}" if text and note else (text or note)
