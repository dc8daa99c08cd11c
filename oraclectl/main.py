"""oraclectl: the operator's command line for the oraclewad daemon.

Exit codes: 0 ok, 1 the daemon refused or failed (its message is printed), 2 usage,
3 the daemon is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

import grpc

from oraclectl import campaign, render
from oraclectl.client import (
    UNARY_TIMEOUT,
    Client,
    ConfigError,
    Refused,
    Target,
    Unreachable,
    resolve_socket,
    socket_from_config,
)
from oraclectl.completion import TENANT_ID
from oraclectl.envimport import SECRET_PLACEHOLDER, EnvFileError, convert, parse_dotenv
from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad._proto.vocabulary import service_enum

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
T = TypeVar("T")
SERVICE_CHOICES = ("all", "recovery", "broadcast")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("oraclewa")
    except PackageNotFoundError:     # run from a source tree that was never installed
        return "unknown"


class UsageError(Exception):
    """A mistake in the invocation that argparse cannot see (exit 2)."""


@dataclass
class Ctx:
    args: argparse.Namespace
    stdout: TextIO
    stderr: TextIO
    stdin: TextIO

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def err(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def client(self) -> Client:
        a = self.args
        if a.addr:
            target = Target(addr=a.addr, token_file=a.token_file, tls_ca=a.tls_ca)
        elif a.config:
            try:
                target = Target(socket=socket_from_config(a.config))
            except ConfigError as e:
                raise UsageError(str(e)) from None
        else:
            try:
                target = Target(socket=a.socket or resolve_socket())
            except ConfigError as e:        # $OWA_CONFIG names a file that cannot be used
                raise UsageError(str(e)) from None
        return Client(target, timeout=a.timeout)

    def using(self, ask: Callable[[Client], T]) -> T:
        """One typed question on a client of its own (`ctx.using(lambda c: c.status(tenant))`)."""
        with self.client() as client:
            return ask(client)

    def show(self, items: Sequence[Any], table: Callable[[list[Any]], str]) -> int:
        """`--json`: the messages as a JSON list; otherwise the table."""
        return self.emit(list(items), lambda: table(list(items)))

    def emit(self, data: Any, text: Callable[[], str]) -> int:
        """`--json`: `data` (a message, a list of them, or plain data) as JSON; otherwise text()."""
        if self.json:
            self.out(render.dumps([_plain(d) for d in data] if isinstance(data, list) else _plain(data)))
        else:
            self.out(text())
        return OK

    def actions(self, done: str, data: dict[str, Any], actions: Sequence[str]) -> int:
        """What a tenant command did, one action a line (`--json`: `data` plus the actions)."""
        return self.emit({**data, "actions": list(actions)},
                         lambda: "\n".join([done, *(f"  {line}" for line in actions)]))


def _plain(data: Any) -> Any:
    return render.to_dict(data) if hasattr(data, "DESCRIPTOR") else data


# ---- commands --------------------------------------------------------------------------------

def _services_arg(value: str) -> list[str]:
    return ["recovery", "broadcast"] if value == "all" else [value]


def _read_secret(path: str, ctx: Ctx) -> str:
    try:
        text = ctx.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise UsageError(f"--evolution-key-file: cannot read {path}: {e.strerror}") from None
    secret = text.strip()
    if not secret:
        raise UsageError(f"--evolution-key-file: {path} is empty")
    return secret


def _add(ctx: Ctx, new: pb.NewTenant) -> int:
    a = ctx.args
    request = pb.AddTenantRequest(tenant=new, wait=not a.no_wait, timeout_s=a.wait_timeout)
    tenant = ctx.using(lambda c: c.add_tenant(request, timeout=a.wait_timeout + 15))

    def text() -> str:
        state = "added" if a.no_wait else "added and ready"
        lines = [f"tenant {tenant.id} {state}", render.tenant_detail(tenant)]
        if a.no_wait:
            lines.append(f"\nnot waiting for readiness: follow with `oraclectl status {tenant.id}`")
        return "\n".join([*lines, "\n" + _next_step(new)])
    return ctx.emit(tenant, text)


def _next_step(new: pb.NewTenant) -> str:
    """What an operator does after `tenant add`: pair the WhatsApp numbers."""
    instances = [*new.recovery_instances, *new.broadcast_instances]
    if instances:
        lines = ["next: pair each WhatsApp number (prints a QR code to scan and waits until it is open):"]
        lines += [f"  oraclectl instances connect {new.id} {name}" for name in instances]
        return "\n".join(lines)
    return (f"next: list the WhatsApp instances in tenants.d/{new.id}.toml ([recovery] instances = "
            f'["{new.id}-1"], [broadcast] instances = ["{new.id}-2"]' + (", [evolution] url" if not
                                                                        new.evolution_url else "")
            + f"), run `oraclectl reload`, then `oraclectl instances connect {new.id} {new.id}-1`")


def _no_instance_flag(a: argparse.Namespace) -> None:
    if getattr(a, "instance", None):
        raise UsageError("--instance is now --recovery-instance NAME or --broadcast-instance NAME: "
                         "an instance belongs to one service")


def cmd_tenant_add(ctx: Ctx) -> int:
    a = ctx.args
    _no_instance_flag(a)
    services = _services_arg(a.services)
    new = pb.NewTenant(id=a.id, name=a.name or "", services=services,
                       service_enums=[service_enum(s) for s in services],
                       release=a.release or "", evolution_url=a.evolution_url or "",
                       recovery_instances=a.recovery_instance or [],
                       broadcast_instances=a.broadcast_instance or [])
    if a.evolution_key_file:
        new.evolution_api_key = _read_secret(a.evolution_key_file, ctx)
    return _add(ctx, new)


def cmd_tenant_remove(ctx: Ctx) -> int:
    a = ctx.args
    if a.purge and not _confirm_purge(ctx, a.id):
        return FAILED
    request = pb.RemoveTenantRequest(id=a.id, purge=a.purge)
    response = ctx.using(lambda c: c.remove_tenant(request, timeout=max(a.timeout, 60)))
    return ctx.actions(f"tenant {a.id} removed" + (" and purged" if a.purge else ""),
                       {"id": a.id, "purged": a.purge}, response.actions)


def cmd_tenant_repair(ctx: Ctx) -> int:
    a = ctx.args
    response = ctx.using(lambda c: c.repair_tenant(a.id, timeout=max(a.timeout, 60)))
    return ctx.actions(f"tenant {a.id} repaired", {"id": a.id}, response.actions)


def cmd_tenant_list(ctx: Ctx) -> int:
    if ctx.args.removed:
        removed = ctx.using(lambda c: c.removed_tenants(timeout=max(ctx.args.timeout, 30)))
        return ctx.show(removed, render.removed_table)
    return ctx.show(ctx.using(lambda c: c.list_tenants()), render.tenants_table)


def _confirm_purge(ctx: Ctx, tenant_id: str) -> bool:
    if ctx.args.yes:
        return True
    if not ctx.stdin.isatty():
        raise UsageError("purging deletes the tenant's databases, Redis keys, secrets and logs; "
                         "stdin is not a terminal, so pass --yes to confirm")
    ctx.stderr.write(f"This deletes every database, Redis key, secret and log of tenant {tenant_id}.\n"
                     f"Type the tenant id to confirm: ")
    ctx.stderr.flush()
    if ctx.stdin.readline().strip() != tenant_id:
        ctx.err("not confirmed; nothing removed")
        return False
    return True


def cmd_tenant_purge(ctx: Ctx) -> int:
    a = ctx.args
    if not _confirm_purge(ctx, a.id):
        return FAILED
    response = ctx.using(lambda c: c.purge_tenant(a.id, timeout=max(a.timeout, 60)))
    return ctx.actions(f"tenant {a.id} purged", {"id": a.id, "purged": True}, response.actions)


def cmd_tenant_restore(ctx: Ctx) -> int:
    a = ctx.args
    request = pb.RestoreTenantRequest(id=a.id, wait=not a.no_wait, timeout_s=a.wait_timeout)
    tenant = ctx.using(lambda c: c.restore_tenant(request, timeout=a.wait_timeout + 15))
    return ctx.emit(tenant, lambda: f"tenant {tenant.id} restored" + ("" if a.no_wait else " and ready")
                    + "\n" + render.tenant_detail(tenant))


def cmd_tenant_show(ctx: Ctx) -> int:
    tenant = ctx.using(lambda c: c.get_tenant(ctx.args.id))
    return ctx.emit(tenant, lambda: render.tenant_detail(tenant))


def cmd_tenant_import_env(ctx: Ctx) -> int:
    a = ctx.args
    try:
        text = Path(a.file).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {a.file}: {e.strerror}") from None
    try:
        values, warnings = parse_dotenv(text)
        conversion = convert(values, tenant_id=a.id, source=a.file)
    except EnvFileError as e:
        raise UsageError(f"{a.file} cannot be imported:\n  " + "\n  ".join(e.problems)) from None
    _no_instance_flag(a)
    if a.recovery_instance:
        conversion.instances = tuple(dict.fromkeys([*conversion.instances, *a.recovery_instance]))
    if a.broadcast_instance:
        conversion.broadcast_instances = tuple(dict.fromkeys([*conversion.broadcast_instances,
                                                              *a.broadcast_instance]))
    warnings += conversion.warnings
    if a.dry_run:
        if ctx.json:
            ctx.out(render.dumps({"tenant": conversion.tenant_doc(), "warnings": warnings,
                                  "notes": conversion.notes, "toml": conversion.to_toml()}))
        else:
            for w in warnings:
                ctx.err(f"warning: {w}")
            for n in conversion.notes:
                ctx.err(f"note: {n}")
            ctx.out(f"# tenants.d/{conversion.tenant_id}.toml as `oraclectl tenant import-env` would add it")
            ctx.out(conversion.to_toml().rstrip())
        return OK
    for w in warnings:
        ctx.err(f"warning: {w}")
    return _add(ctx, conversion.new_tenant(release=a.release or ""))


def _services(ctx: Ctx, response: Any) -> int:
    return ctx.show(response.services, render.services_table)


def cmd_status(ctx: Ctx) -> int:
    a = ctx.args
    if a.watch is None:
        return ctx.show(ctx.using(lambda c: c.status(a.id or "")), render.services_table)
    if a.watch <= 0:
        raise UsageError("--watch takes a positive number of seconds")
    tty = ctx.stdout.isatty()
    try:
        while True:   # like `watch oraclectl status`: the screen redrawn in place on a terminal
            services = ctx.using(lambda c: c.status(a.id or ""))
            if ctx.json:
                ctx.out(render.json_line([render.to_dict(s) for s in services]))
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                head = f"every {a.watch:g}s: oraclectl status {a.id or ''}".rstrip() + f"    {stamp}"
                ctx.stdout.write(("\x1b[H\x1b[2J" if tty else "") + head + "\n\n")
                ctx.out(render.services_table(services) + ("" if tty else "\n"))
            time.sleep(a.watch)
    except KeyboardInterrupt:
        return OK


def cmd_health(ctx: Ctx) -> int:
    """Exit 1 when any service is unhealthy (for cron, monit): anything but ok, or stopped on purpose."""
    tenant = ctx.args.id or ""
    services = ctx.using(lambda c: c.health(tenant))

    def text() -> str:
        report = render.health_report(services, ctx.using(lambda c: c.status(tenant)))
        lines = render.instance_lines(services)
        return report + ("\n\ninstances:\n" + "\n".join(lines) if lines else "")
    ctx.emit(list(services), text)
    return OK if all(s.status in ("ok", "stopped") for s in services) else FAILED


def cmd_metrics(ctx: Ctx) -> int:
    return ctx.show(ctx.using(lambda c: c.metrics(ctx.args.id or "")), render.metrics_table)


def cmd_top(ctx: Ctx) -> int:
    from oraclectl.top import SORTS, run_top

    a = ctx.args
    if not (ctx.stdout.isatty() and ctx.stdin.isatty()):
        raise UsageError("top needs a terminal; for scripts use `oraclectl metrics` or "
                         "`oraclectl --json status`")
    if a.sort not in SORTS:
        raise UsageError(f"--sort: one of {', '.join(SORTS)} ({', '.join(v[0] for v in SORTS.values())})")
    if a.interval < 0.2:
        raise UsageError("--interval: at least 0.2 seconds")
    tenant = a.id or ""
    with ctx.client() as client:
        def fetch() -> tuple[list[Any], list[Any]]:
            return client.status(tenant, timeout=5), client.metrics(tenant, timeout=5)

        fetch()     # an unreachable daemon or unknown tenant is reported before the screen clears
        return run_top(fetch, a.interval, a.sort)


def _verb(verb: Callable[..., pb.StatusResponse]) -> Callable[[Ctx], int]:
    """`start`, `stop` or `restart`: verb is Client.start, Client.stop or Client.restart."""
    def run(ctx: Ctx) -> int:
        a = ctx.args
        if a.all == bool(a.id):
            raise UsageError(f"{a.command} needs a tenant id or --all (every tenant)")
        if a.all and a.service:
            raise UsageError(f"{a.command} --all takes no service: it acts on every service of every tenant")
        if not a.all:
            request = pb.ServiceRequest(tenant=a.id, service=a.service or "")
            return _services(ctx, ctx.using(lambda c: verb(c, request, timeout=max(a.timeout, 60))))
        # Every tenant, one call each (a tenant that refuses is reported; the others go on).
        tenants = sorted({s.tenant for s in ctx.using(lambda c: c.status())
                          if s.service and s.state_enum != pb.STATE_INVALID and s.tenant != "programs"},
                         key=str.lower)
        states, failed = [], 0
        for tenant in tenants:
            try:
                one = pb.ServiceRequest(tenant=tenant)
                response = ctx.using(lambda c, one=one: verb(c, one, timeout=max(a.timeout, 60)))
                states += response.services
            except Refused as e:
                failed += 1
                ctx.err(f"oraclectl: {tenant}: {_code_name(e.code)}: {e.details}")
        _services(ctx, pb.StatusResponse(services=states))
        return FAILED if failed else OK

    return run


def cmd_reload(ctx: Ctx) -> int:
    response = ctx.using(lambda c: c.reload(timeout=max(ctx.args.timeout, 60)))
    ctx.emit(response, lambda: render.reload_text(response))
    # Skipped tenant files are the operator's to fix: scripts and CI must see them.
    return FAILED if response.problems else OK


def _progress_line(p: Any) -> str:
    if p.phase == "summary":
        return p.message
    who = "/".join(x for x in (p.tenant, p.service) if x) or "fleet"
    parts = [f"{who:<24}", f"{p.phase:<10}"]
    if p.elapsed_s:
        parts.append(f"{p.elapsed_s:6.1f}s")
    if p.health:
        parts.append(f"health {p.health}")
    if p.message:
        parts.append(p.message)
    return "  ".join(parts)


def _swap_options(a: argparse.Namespace) -> dict[str, float]:
    out = {}
    if a.healthy_deadline is not None:
        out["healthy_deadline_s"] = a.healthy_deadline
    if a.min_healthy_time is not None:
        out["min_healthy_time_s"] = a.min_healthy_time
    return out


def cmd_deploy(ctx: Ctx) -> int:
    a = ctx.args
    if a.all:
        if a.version is not None:
            raise UsageError("deploy --all takes only a VERSION (every tenant moves)")
        request = pb.DeployRequest(version=a.target, all=True, canary=a.canary, max_parallel=a.max_parallel,
                                   dry_run=a.dry_run, **_swap_options(a))
    else:
        if a.version is None:
            raise UsageError("deploy needs a tenant and a VERSION (or --all VERSION)")
        if a.dry_run or a.canary or a.max_parallel != 1:
            raise UsageError("--dry-run, --canary and --max-parallel go with --all")
        request = pb.DeployRequest(tenant=a.target, version=a.version, **_swap_options(a))
    return _stream(ctx, lambda c: c.deploy(request), lambda p: [_progress_line(p)])


def cmd_rollback(ctx: Ctx) -> int:
    a = ctx.args
    request = pb.RollbackRequest(tenant=a.id, version=a.version or "", **_swap_options(a))
    return _stream(ctx, lambda c: c.rollback(request), lambda p: [_progress_line(p)])


def cmd_history(ctx: Ctx) -> int:
    def table(entries: list[Any]) -> str:
        rows = [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts)), e.service, e.action,
                 e.from_version, e.to_version, e.result, f"{e.duration_s:.1f}s", "yes" if e.stable else "no",
                 e.reason or "-")
                for e in entries]
        heads = ("WHEN", "SERVICE", "ACTION", "FROM", "TO", "RESULT", "TOOK", "STABLE", "REASON")
        return render.table(heads, rows) if rows else "no history"
    return ctx.show(ctx.using(lambda c: c.history(ctx.args.id)), table)


def cmd_releases(ctx: Ctx) -> int:
    response = ctx.using(lambda c: c.list_releases())
    def table(releases: list[Any]) -> str:
        rows = [(r.version, " ".join(f"{k}<={v}" for k, v in sorted(r.schema.items())) or "-",
                 ",".join(r.tenants) or "-", r.python) for r in releases]
        return render.table(("VERSION", "SCHEMA", "TENANTS", "PYTHON"), rows)
    return ctx.show(response.releases, table)


def cmd_release_install(ctx: Ctx) -> int:
    a = ctx.args
    request = pb.InstallReleaseRequest(path=os.path.abspath(a.path), version=a.version,
                                       find_links=[os.path.abspath(d) for d in a.find_links or []],
                                       share_packages=a.share_packages)
    release = ctx.using(lambda c: c.install_release(request, timeout=max(ctx.args.timeout, 900)))

    def text() -> str:
        schema = ", ".join(f"{k} 1-{v}" if v else f"{k} none" for k, v in sorted(release.schema.items()))
        return (f"installed release {release.version} at {release.path}\n  python  {release.python}\n"
                f"  schema  {schema or '-'}")
    return ctx.emit(release, text)


def cmd_release_remove(ctx: Ctx) -> int:
    response = ctx.using(lambda c: c.remove_release(ctx.args.version))
    return ctx.emit(response, lambda: response.message)


def _stream(ctx: Ctx, open_stream: Callable[[Client], Iterator[Any]], lines: Callable[[Any], list[str]],
            json_lines: Callable[[Any], list[Any]] = lambda item: [render.to_dict(item)]) -> int:
    with ctx.client() as client:
        try:
            for item in open_stream(client):
                text = [render.json_line(v) for v in json_lines(item)] if ctx.json else lines(item)
                if text:
                    ctx.out("\n".join(text))
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:
            # `oraclectl logs -f | head`: the reader left; nothing more to say.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return OK


def parse_since(value: str, now: float | None = None) -> float:
    """`10m`, `2h`, `1d`, `90s` ago, or a local time `2026-12-01T09:00[:00]` -> unix time."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip()
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, fmt))
        except ValueError:
            continue
    raise UsageError(f"--since {value!r}: give a duration (90s, 10m, 2h, 1d) or a local time "
                     "(2026-12-01T09:00)")


def cmd_logs(ctx: Ctx) -> int:
    a = ctx.args
    request = pb.TailLogsRequest(tenant=a.id or "", service=a.service or "", channel=a.channel,
                                 lines=a.lines, follow=a.follow, level=a.level or "")
    if a.since:
        request.since = parse_since(a.since)
    labelled = not (a.id and a.service)
    width = [0]

    def lines(item: pb.LogLines) -> list[str]:
        prefix = ""
        if labelled:   # like `docker compose logs`: who wrote it, aligned
            name = f"{item.tenant}/{item.service:<9}" if item.tenant else f"{item.service:<9}"
            width[0] = max(width[0], len(name))
            prefix = f"{name:<{width[0]}} | "
        return [prefix + render.log_line(line) for line in item.lines]

    def json_lines(item: pb.LogLines) -> list[dict[str, Any]]:
        return [render.log_record(line, item.tenant, item.service) for line in item.lines]

    return _stream(ctx, lambda c: c.tail_logs(request), lines, json_lines)


def cmd_completion(ctx: Ctx) -> int:
    from oraclectl import completion

    ctx.stdout.write(completion.script(build_parser(), ctx.args.shell))
    return OK


def cmd_events(ctx: Ctx) -> int:
    a = ctx.args
    request = pb.WatchEventsRequest(tenant=a.tenant or "", recent=a.recent, follow=a.follow)
    return _stream(ctx, lambda c: c.watch_events(request), lambda e: [render.event_line(e)])


# ---- instances (the service's own API, through the daemon's ServiceCall) ---------------------

CONNECT_POLL_S = 2.0
QR_REFRESH_S = 40.0  # WhatsApp QR codes expire within about a minute: show a fresh one before then


def _service_call(ctx: Ctx, tenant: str, service: str, method: str, path: str,
                  body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = pb.ServiceCallRequest(tenant=tenant, service=service, service_enum=service_enum(service),
                                    method=method, path=path,
                                    body_json=json.dumps(body) if body is not None else "")
    response = ctx.using(lambda c: c.service_call(request, timeout=max(ctx.args.timeout, 60)))
    try:
        return response.status, json.loads(response.body_json or "null")
    except ValueError:
        return response.status, {"error": response.body_json[:500]}


def _service_error(answer: Any, status: int) -> str:
    if isinstance(answer, dict) and answer.get("error"):
        return str(answer["error"])
    return f"the service answered HTTP {status}"


def _instances_of(ctx: Ctx, tenant: pb.Tenant) -> tuple[list[dict[str, Any]], list[str]]:
    """Every instance of the tenant's services, each with its owner; and what could not be asked."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for service in tenant.services:
        try:
            status, answer = _service_call(ctx, tenant.id, service, "GET", "/instances")
        except Refused as e:
            problems.append(f"{service}: {e.details}")
            continue
        if status != 200 or not isinstance(answer, dict):
            problems.append(f"{service}: {_service_error(answer, status)}")
            continue
        rows += [{**row, "service": service} for row in answer.get("instances", [])]
    return rows, problems


def cmd_instances(ctx: Ctx) -> int:
    words = ctx.args.words
    if words[0] == "connect" and len(words) == 3:
        return _connect(ctx, words[1], words[2])
    if words[0] == "attest" and len(words) == 3:
        return _attest(ctx, words[1], words[2])
    if len(words) != 1:
        raise UsageError("use `oraclectl instances ID`, `oraclectl instances connect ID INSTANCE` or "
                         "`oraclectl instances attest ID INSTANCE --network 4g --groups 3 --recharge DATE`")
    tenant = ctx.using(lambda c: c.get_tenant(words[0]))
    rows, problems = _instances_of(ctx, tenant)
    if ctx.json:
        ctx.out(render.dumps({"tenant": tenant.id, "instances": rows, "problems": problems}))
    else:
        ctx.out(render.table(("INSTANCE", "SERVICE", "STATE", "STAGE", "CAP", "SENT", "NEXT SLOT", "WHY NOT"),
                             [_instance_row(r) for r in rows]) if rows else "no instances")
        for problem in problems:
            ctx.err(f"oraclectl: {problem}")
    return FAILED if problems else OK


def _instance_row(r: dict[str, Any]) -> tuple[str, ...]:
    """The anti-ban columns (stage, today's cap, sent today, next slot, why not) when the service has them."""
    ab = r.get("antiban") or {}
    slot = ab.get("next_slot")
    when = "-" if slot is None else ("now" if ab.get("eligible") else
                                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(slot)))
    why = ab.get("why_not") or ("" if ab.get("eligible") else r.get("detail", ""))
    return (r["name"], r["service"], r["state"], str(ab.get("stage", "-")),
            "-" if ab.get("cap") is None else str(ab["cap"]), str(ab.get("sent_today", "-")), when, why)


def _attest(ctx: Ctx, tenant_id: str, instance: str) -> int:
    a = ctx.args
    body = {k: v for k, v in (("network", a.network), ("groups", a.groups), ("recharge", a.recharge))
            if v is not None}
    if not body:
        raise UsageError("attest needs at least one of --network 4g|proxy, --groups N, --recharge YYYY-MM-DD")
    tenant = ctx.using(lambda c: c.get_tenant(tenant_id))
    rows, problems = _instances_of(ctx, tenant)
    owner = next((r["service"] for r in rows if r["name"] == instance), None)
    if owner is None:
        where = "; ".join(problems) if problems else f"not listed in {tenant.source_file}"
        ctx.err(f"oraclectl: {instance!r} is not an instance of {tenant_id}: {where}")
        return FAILED
    status, answer = _service_call(ctx, tenant_id, owner, "POST",
                                   f"/instances/{quote(instance, safe='')}/attest", body)
    if status != 200:
        ctx.err(f"oraclectl: {owner}: {_service_error(answer, status)}")
        return FAILED
    return ctx.emit(answer, lambda: f"{instance} ({owner}): attested network={answer.get('network')} "
                    f"groups={answer.get('groups')} recharge={answer.get('recharge')}")


def _connect(ctx: Ctx, tenant_id: str, instance: str) -> int:
    a = ctx.args
    tenant = ctx.using(lambda c: c.get_tenant(tenant_id))
    rows, problems = _instances_of(ctx, tenant)
    owner = next((r["service"] for r in rows if r["name"] == instance), None)
    if owner is None:
        where = "; ".join(problems) if problems else (
            f"list it in [recovery] instances or [broadcast] instances of {tenant.source_file} "
            "and run `oraclectl reload`")
        ctx.err(f"oraclectl: {instance!r} is not an instance of {tenant_id}: {where}")
        return FAILED
    body = {"number": a.number} if a.number else {}
    path = f"/instances/{quote(instance, safe='')}"
    status, answer = _service_call(ctx, tenant_id, owner, "POST", f"{path}/connect", body)
    if status != 200:
        ctx.err(f"oraclectl: {owner}: {_service_error(answer, status)}")
        return FAILED
    if not ctx.json:
        if answer.get("created"):
            ctx.out(f"created {instance} on Evolution")
        ctx.out(f"{instance}: webhook -> {answer.get('webhook_url')} ({owner}, signed)")
    if answer.get("state") == "open":
        ctx.out(render.dumps(answer) if ctx.json else f"{instance} is connected (open)")
        return OK
    shown = ""
    if not ctx.json:
        shown = _show_pairing(ctx, instance, answer)
    if a.no_wait:
        if ctx.json:
            ctx.out(render.dumps(answer))
        return OK
    deadline = time.monotonic() + a.wait
    refresh_at = time.monotonic() + QR_REFRESH_S
    state = answer.get("state", "")
    while time.monotonic() < deadline:
        time.sleep(CONNECT_POLL_S)
        status, now = _service_call(ctx, tenant_id, owner, "GET", f"{path}?refresh=1")
        state = now.get("state", "") if isinstance(now, dict) else ""
        if state == "open":
            ctx.out(render.dumps(now) if ctx.json else f"{instance} is connected (open)")
            return OK
        if state in ("refused", "missing", "unauthorized"):
            break
        if time.monotonic() >= refresh_at:
            refresh_at = time.monotonic() + QR_REFRESH_S
            status, again = _service_call(ctx, tenant_id, owner, "POST", f"{path}/connect", body)
            if status == 200 and again.get("code") and again.get("code") != shown and not ctx.json:
                ctx.out("the QR code expired; a fresh one:")
                shown = _show_pairing(ctx, instance, again)
    ctx.err(f"oraclectl: {instance} is {state or 'not open'} after {a.wait:g}s; run the command again "
            "for a fresh QR code")
    return FAILED


def _show_pairing(ctx: Ctx, instance: str, answer: dict[str, Any]) -> str:
    code = answer.get("code") or ""
    if code:
        ctx.out(f"scan with WhatsApp on the phone of {instance} (Settings > Linked devices > Link a device):")
        ctx.out(render.qr_text(code))
    if answer.get("pairing_code"):
        ctx.out(f"or enter the pairing code {answer['pairing_code']} (Link with phone number instead)")
    ctx.out(f"waiting for {instance} to be open... (Ctrl-C stops waiting; pairing goes on)")
    return code


# ---- shop webhooks: secrets and the recovery report ------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_arg(text: str) -> float:
    """`90`, `90s`, `15m`, `24h`, `7d`, `2w` -> seconds (argparse type)."""
    value, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "s")
    try:
        seconds = float(value) * _UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 90s, 15m, 24h or 7d")
    return seconds


EXAMPLE_ORDER = ('{"event":"order.paid","data":{"id":"pedido-1001","product":{"title":"Curso Online"},'
                 '"user":{"name":"Ana Souza","phone":"(11) 98765-4321"},"total":197.9}}')


def curl_example(url: str, secret: str) -> str:
    """A signed order webhook (the X-Webhook-Signature scheme) that works when pasted in bash."""
    return "\n".join([
        f"body='{EXAMPLE_ORDER}'",
        "ts=$(date +%s%3N)",
        f"""sig=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac '{secret}' | sed 's/^.*= //')""",
        f"curl -sS -X POST {url} -H 'Content-Type: application/json' \\",
        '  -H "X-Webhook-Timestamp: $ts" -H "X-Webhook-Signature: $sig" --data "$body"',
    ])


def _show_secrets(ctx: Ctx, answer: pb.WebhookSecretsResponse) -> None:
    ctx.emit(answer, lambda: _secrets_text(answer))


def _secrets_text(answer: pb.WebhookSecretsResponse) -> str:
    lines = [f"shop webhooks of {answer.id}",
             f"  {'URL:':<16}{answer.webhook_url or '- (the tenant has no recovery service)'}",
             f"  {'secret:':<16}{answer.secret}",
             "  signs X-Webhook-Signature (hex HMAC-SHA256 of '<X-Webhook-Timestamp ms>.<body>') and "
             "Standard Webhooks (webhook-id/-timestamp/-signature)",
             f"  {'static token:':<16}{answer.static_token} "
             f"({'accepted' if answer.static_token_enabled else 'off: [recovery] static_token = true'}"
             " as X-Auth-Webhook)"]
    lines += [f"  {'old secret:':<16}still accepted until "
              f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(u))}" for u in answer.previous_until]
    lines.append(f"  {'stored in:':<16}{answer.file} (0600)")
    if answer.webhook_url:
        lines += ["", "try it (bash; the thank-you goes to the example phone):", "",
                  curl_example(answer.webhook_url, answer.secret)]
    return "\n".join(lines)


def cmd_tenant_secrets(ctx: Ctx) -> int:
    _show_secrets(ctx, ctx.using(lambda c: c.webhook_secrets(ctx.args.id)))
    return OK


def cmd_tenant_rotate_secret(ctx: Ctx) -> int:
    a = ctx.args
    request = pb.RotateWebhookSecretRequest(id=a.id, overlap_s=a.overlap)
    answer = ctx.using(lambda c: c.rotate_webhook_secret(request, timeout=max(ctx.args.timeout, 60)))
    if not ctx.json:
        ctx.out(f"rotated: the old secret works {render.duration(a.overlap) if a.overlap else 'no'} more; "
                "give the shop the new one below\n")
    _show_secrets(ctx, answer)
    return OK


REPORT_ROWS = (("orders_expired", "orders expired"), ("orders_reminded", "reminded"),
               ("orders_recovered", "recovered"), ("revenue_recovered", "revenue recovered"),
               ("conversion", "conversion"), ("uncertain", "uncertain messages"),
               ("invalid_numbers", "invalid numbers"), ("opt_outs", "opt-outs"))


def cmd_recovery(ctx: Ctx) -> int:
    a = ctx.args
    status, answer = _service_call(ctx, a.id, "recovery", "GET", f"/recovery/report?since={a.since:g}")
    if status != 200 or not isinstance(answer, dict):
        ctx.err(f"oraclectl: the recovery report of {a.id}: {_service_error(answer, status)}")
        return FAILED
    if ctx.json:
        ctx.out(render.dumps(answer))
        return OK
    def shown(key: str) -> str:
        value = answer.get(key)
        if key == "revenue_recovered":
            return "R$ " + f"{float(value or 0):,.2f}".replace(",", "X").replace(".", ",").replace("X", ".")
        if key == "conversion":
            return f"{float(value or 0) * 100:.1f}%"
        return str(value if value is not None else DASH_TEXT)
    lines = [f"recovery of {a.id} since {answer.get('since', '?')} ({render.duration(a.since)})"]
    lines += [f"  {label + ':':<20}{shown(key)}" for key, label in REPORT_ROWS]
    messages = answer.get("messages") or {}
    lines.append(f"  {'messages:':<20}" + (", ".join(f"{k} {v}" for k, v in sorted(messages.items()))
                                           or "none"))
    ctx.out("\n".join(lines))
    return OK


DASH_TEXT = "-"


# ---- argument parsing ------------------------------------------------------------------------

EPILOG = """\
examples:
  oraclectl status                       every service of every tenant
  oraclectl tenant add lojaABC --name "Loja ABC" --evolution-url https://evo.example.com \\
      --evolution-key-file /root/lojaABC.key --recovery-instance lojaABC-1
  oraclectl instances connect lojaABC lojaABC-1   pair a WhatsApp number (QR code)
  oraclectl campaign create lojaABC "Natal" -t 'Oi {{first_name}}!'   then import, test, start
  oraclectl tenant import-env .env.imperio --dry-run
  oraclectl logs imperio recovery -f
  oraclectl --json status imperio | jq .
  oraclectl --addr vps.example.com:7443 --token-file ~/.oraclewa.token --tls-ca ca.pem status

The socket: --socket, else $OWA_SOCKET, else the one named by the daemon config (--config, $OWA_CONFIG,
./oraclewad.toml, /etc/oraclewa/oraclewad.toml: [control] socket or <run_dir>/oraclewad.sock),
else /run/oraclewa/oraclewad.sock.
exit codes: 0 ok, 1 the daemon refused or failed, 2 usage, 3 daemon unreachable
"""


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", default=default,
                       help="daemon's unix socket (default: $OWA_SOCKET, else from the daemon config)")
    where.add_argument("--addr", metavar="HOST:PORT", default=default,
                       help="daemon's TCP listener (needs --token-file)")
    where.add_argument("--config", metavar="FILE", default=default,
                       help="the daemon's oraclewad.toml: use the socket it configures")
    group.add_argument("--token-file", metavar="F", default=default, help="file holding the TCP bearer token")
    group.add_argument("--tls-ca", metavar="F", default=default, help="CA certificate: use TLS for --addr")
    group.add_argument("--json", action="store_true", default=default,
                       help="print JSON (one document; JSON lines for logs/events)")
    if not suppress:    # top level only: `tenant add --timeout` is the readiness wait
        group.add_argument("--timeout", type=float, metavar="S", default=UNARY_TIMEOUT,
                           help=f"deadline for quick calls in seconds (default {UNARY_TIMEOUT:g})")


def tenant_arg(parser: argparse.ArgumentParser, **kw: Any) -> None:
    """The tenant id positional; completion offers the daemon's tenant ids."""
    action = parser.add_argument("id", **kw)
    action.complete = TENANT_ID  # type: ignore[attr-defined]  (read by shtab)


_FMT = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oraclectl", description="Operate the oraclewad daemon.",
                                     epilog=EPILOG, formatter_class=_FMT)
    parser.add_argument("--version", action="version", version=f"oraclectl {version()}")
    _connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _tenant_commands(commands)
    _service_commands(commands)
    _release_commands(commands)
    _other_commands(commands)
    return parser


def _command(sub: Any, name: str, help_text: str, func: Callable[[Ctx], int], epilog: str = "",
            **kw: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog=("examples:\n" + epilog) if epilog else None, formatter_class=_FMT, **kw)
    _connection_options(p, suppress=True)
    p.set_defaults(func=func)
    return p


def _wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true", help="answer once the file is written; don't wait "
                                                           "for the services to be ready")
    p.add_argument("--timeout", dest="wait_timeout", type=float, default=120.0, metavar="S",
                   help="how long to wait for readiness (default 120)")


def _instance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recovery-instance", action="append", metavar="NAME",
                   help="an Evolution instance that sends order reminders (repeatable)")
    p.add_argument("--broadcast-instance", action="append", metavar="NAME",
                   help="an Evolution instance that sends campaigns (repeatable; never also recovery's)")
    p.add_argument("--instance", action="append", help=argparse.SUPPRESS)


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--healthy-deadline", type=float, metavar="S",
                   help="time the new process has to send READY (default: [releases] in the config, 60)")
    p.add_argument("--min-healthy-time", type=float, metavar="S",
                   help="seconds of passing health before the old process stops (default: config, 10)")


def _tenant_commands(commands: Any) -> None:
    tenant = commands.add_parser("tenant", help="add, remove, restore, purge, list, show or import tenants",
                                 description="Manage tenants (the client businesses).", formatter_class=_FMT,
                                 epilog="examples:\n  oraclectl tenant list\n  oraclectl tenant add lojaABC\n"
                                        "  oraclectl tenant remove lojaABC\n"
                                        "  oraclectl tenant list --removed\n"
                                        "  oraclectl tenant restore lojaABC\n"
                                        "  oraclectl tenant purge lojaABC --yes")
    tsub = tenant.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)

    p = _command(tsub, "add", "add a tenant: write tenants.d/ID.toml, provision and start its services",
                cmd_tenant_add,
                "  oraclectl tenant add lojaABC --name 'Loja ABC' --services recovery\n"
                "  oraclectl tenant add imperio --evolution-url https://evo.example.com "
                "--evolution-key-file key.txt --recovery-instance imperio-1 --broadcast-instance imperio-2\n"
                "  pass - as --evolution-key-file to read the key from stdin")
    p.add_argument("id", help="tenant id: a letter first, then letters, digits, '_' or '-'")
    p.add_argument("--name", help="display name (default: the id)")
    p.add_argument("--services", choices=SERVICE_CHOICES, default="all", help="which services (default all)")
    p.add_argument("--release", metavar="V", help="pin a release (v2.1.0 and 2.1.0 are the same)")
    p.add_argument("--evolution-url", metavar="U", help="the Evolution API base URL")
    p.add_argument("--evolution-key-file", metavar="F",
                   help="file holding the Evolution API key; the daemon stores it 0600 (never in tenants.d)")
    _instance_options(p)
    _wait_options(p)

    p = _command(tsub, "remove", "remove a tenant: stop its services and retire its file (data kept "
                "until `tenant purge`)", cmd_tenant_remove,
                "  oraclectl tenant remove lojaABC\n  oraclectl tenant remove lojaABC --purge --yes")
    tenant_arg(p)
    p.add_argument("--purge", action="store_true",
                   help="also delete its databases, Redis keys, secrets, ports and logs "
                        "(works on an already removed tenant too)")
    p.add_argument("--yes", action="store_true", help="don't ask before --purge")

    p = _command(tsub, "list", "list tenants (or the removed ones whose data is kept)", cmd_tenant_list,
                "  oraclectl tenant list\n  oraclectl --json tenant list\n  oraclectl tenant list --removed")
    p.add_argument("--removed", action="store_true",
                   help="tenants removed with their data kept: what is kept, its size, since when")
    p = _command(tsub, "purge", "delete everything a removed tenant left (databases, Redis keys, "
                "secrets, ports, logs)", cmd_tenant_purge, "  oraclectl tenant purge lojaABC --yes")
    tenant_arg(p)
    p.add_argument("--yes", action="store_true", help="don't ask first")
    p = _command(tsub, "restore", "bring a removed tenant back with its data and ports", cmd_tenant_restore,
                "  oraclectl tenant restore lojaABC")
    tenant_arg(p)
    _wait_options(p)
    p = _command(tsub, "repair", "provision a tenant again (databases, roles, passwords, Redis users) "
                "and retry its failing services", cmd_tenant_repair, "  oraclectl tenant repair lojaABC")
    tenant_arg(p)
    p = _command(tsub, "show", "show one tenant: ports, webhook URL, where its secrets are", cmd_tenant_show,
                "  oraclectl tenant show imperio")
    tenant_arg(p)

    p = _command(tsub, "secrets", "the shop-webhook URL, secret and static token, with a curl example",
                cmd_tenant_secrets, "  oraclectl tenant secrets imperio")
    p.add_argument("id")
    p = _command(tsub, "rotate-secret", "a new webhook secret; the old one keeps working for --overlap",
                cmd_tenant_rotate_secret,
                "  oraclectl tenant rotate-secret imperio\n"
                "  oraclectl tenant rotate-secret imperio --overlap 0")
    p.add_argument("id")
    p.add_argument("--overlap", type=duration_arg, default=86400.0, metavar="DURATION",
                   help="how long the old secret stays valid: 90s, 15m, 24h (default), 7d; 0 stops it now")

    p = _command(tsub, "import-env", "add a tenant from a .env file of the old (v3 Node) system",
                cmd_tenant_import_env,
                "  oraclectl tenant import-env .env.imperio --dry-run\n"
                "  oraclectl tenant import-env .env.novocliente --id novocliente")
    p.add_argument("file", help="the .env file (CLIENT_ID, SERVICE_TYPE, ANTIBAN_*, EVOLUTION_API_* ...)")
    p.add_argument("--id", help="tenant id (default: CLIENT_ID)")
    p.add_argument("--release", metavar="V", help="pin a release")
    _instance_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help=f"print the tenant file instead of adding it (the key shows as {SECRET_PLACEHOLDER})")
    _wait_options(p)


def _service_commands(commands: Any) -> None:
    """status, health, metrics, top, start/stop/restart, reload."""
    p = _command(commands, "status", "supervision state of every service (or one tenant's)", cmd_status,
                "  oraclectl status\n  oraclectl status imperio\n  oraclectl --json status\n"
                "  oraclectl status --watch            redraw every 2 s until Ctrl-C")
    tenant_arg(p, nargs="?", help="tenant id (default: all)")
    p.add_argument("-w", "--watch", type=float, nargs="?", const=2.0, metavar="S",
                   help="redraw every S seconds (default 2) until Ctrl-C; with --json one line per round")
    p = _command(commands, "health", "ask each service for its dependency checks (exit 1 if any fails)",
                cmd_health, "  oraclectl health imperio")
    tenant_arg(p, nargs="?")
    p = _command(commands, "metrics", "key figures per service", cmd_metrics, "  oraclectl metrics")
    tenant_arg(p, nargs="?")
    p = _command(commands, "top", "live view of every service (like htop): q or Ctrl-C quits; keys sort",
                cmd_top, "  oraclectl top\n  oraclectl top imperio --sort c --interval 1")
    tenant_arg(p, nargs="?", help="only this tenant")
    p.add_argument("--sort", default="n", metavar="KEY",
                   help="n tenant (default), s state, c cpu, m memory, r restarts, g msgs/min, o outbox")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="refresh every S seconds (2)")
    for name, method in (("start", Client.start), ("stop", Client.stop), ("restart", Client.restart)):
        p = _command(commands, name, f"{name} a tenant's services (or one of them, or all)", _verb(method),
                    f"  oraclectl {name} imperio\n  oraclectl {name} imperio broadcast\n"
                    f"  oraclectl {name} --all")
        tenant_arg(p, nargs="?", help="tenant id (or `programs`)")
        p.add_argument("service", nargs="?", help="recovery or broadcast (default: both)")
        p.add_argument("--all", action="store_true", help=f"{name} every service of every tenant")
    _command(commands, "reload", "re-read tenants.d and apply the difference (like SIGHUP)", cmd_reload,
            "  oraclectl reload")


def _release_commands(commands: Any) -> None:
    """deploy, rollback, history, releases, release install/remove."""
    p = _command(commands, "deploy", "move a tenant (or every tenant) to another release, health-gated",
                cmd_deploy, "  oraclectl deploy imperio v2.2.0\n  oraclectl deploy --all 2.2.0 --canary 1 "
                "--max-parallel 4\n  oraclectl deploy --all 2.2.0 --dry-run")
    p.add_argument("target", metavar="ID", help="tenant id (with --all: the VERSION)")
    p.add_argument("version", nargs="?", metavar="VERSION", help="v2.1.0 and 2.1.0 are the same")
    p.add_argument("--all", action="store_true", help="every tenant: canaries first, then K at a time")
    p.add_argument("--canary", type=int, default=0, metavar="N", help="with --all: N tenants first, alone")
    p.add_argument("--max-parallel", type=int, default=1, metavar="K",
                   help="with --all: K at a time (default 1)")
    p.add_argument("--dry-run", action="store_true", help="with --all: show the plan, change nothing")
    _gate_options(p)
    p = _command(commands, "rollback", "move a tenant back (default: to its last stable release)",
                cmd_rollback,
                "  oraclectl rollback imperio\n  oraclectl rollback imperio v2.1.0")
    tenant_arg(p)
    p.add_argument("version", nargs="?")
    _gate_options(p)
    p = _command(commands, "history", "a tenant's release swaps (last 50)", cmd_history,
                "  oraclectl history imperio")
    tenant_arg(p)
    _command(commands, "releases", "installed releases and the tenants on each", cmd_releases,
            "  oraclectl releases")
    release = commands.add_parser("release", help="install or remove a release",
                                  description="Manage installed releases (releases_dir).",
                                  formatter_class=_FMT,
                                  epilog="examples:\n  oraclectl release install dist/oraclewa-2.2.0.whl "
                                         "--version 2.2.0 --find-links wheels/\n"
                                         "  oraclectl release remove 2.1.0")
    rsub = release.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    p = _command(rsub, "install", "build a release from a wheel or source folder (venv + pip)",
                cmd_release_install,
                "  oraclectl release install ./oraclewa-src --version 2.2.0 --share-packages")
    p.add_argument("path", help="a wheel (.whl) or a source folder with pyproject.toml")
    p.add_argument("--version", required=True, metavar="V", help="the release's name (v2.2.0 == 2.2.0)")
    p.add_argument("--find-links", action="append", metavar="DIR",
                   help="install offline from this wheel directory (repeatable; implies --no-index)")
    p.add_argument("--share-packages", action="store_true",
                   help="let the release see the daemon's own packages (installs only what differs)")
    p = _command(rsub, "remove", "delete an installed release (refused while a tenant uses it)",
                cmd_release_remove, "  oraclectl release remove 2.1.0")
    p.add_argument("version")


def _other_commands(commands: Any) -> None:
    """logs, instances, completion, recovery, campaign, events."""
    p = _command(commands, "logs", "log lines of every tenant, one tenant, or one service, as readable "
                "lines (--json: the raw records)", cmd_logs,
                "  oraclectl logs -f                      every tenant, prefixed tenant/service\n"
                "  oraclectl logs imperio\n  oraclectl logs imperio recovery --channel http -n 200\n"
                "  oraclectl logs imperio -f --level warning --since 10m\n"
                "  oraclectl --json logs imperio recovery | jq .msg")
    tenant_arg(p, nargs="?", help="tenant id (default: every tenant)")
    p.add_argument("service", nargs="?", help="recovery or broadcast (default: both)")
    p.add_argument("--channel", default="combined",
                   help="combined (default: every line), error (level >= error and raw stderr), "
                        "http (requests), runtime (start-up, shutdown), webhook, broadcast, antiban")
    p.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                   help="existing lines of each file first (default 50)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines (follows the files across rotation)")
    p.add_argument("--level", choices=("debug", "info", "warning", "error", "critical"),
                   help="only records at this level or above")
    p.add_argument("--since", metavar="WHEN", help="only records since then: 90s, 10m, 2h, 1d, or a "
                                                   "local time such as 2026-12-01T09:00")
    p = _command(commands, "instances", "a tenant's WhatsApp instances (owner, state), or pair one",
                cmd_instances,
                "  oraclectl instances imperio\n"
                "  oraclectl instances connect imperio imperio-1          QR code, waits until open\n"
                "  oraclectl instances connect imperio imperio-1 --number 5511999999999"
                "   also a pairing code\n"
                "  oraclectl instances attest imperio imperio-2 --network 4g --groups 3 "
                "--recharge 2026-11-20")
    p.add_argument("words", nargs="+", metavar="ID | connect ID INSTANCE | attest ID INSTANCE")
    p.add_argument("--network", choices=("4g", "proxy"), help="attest: how the phone reaches the internet")
    p.add_argument("--groups", type=int, metavar="N", help="attest: WhatsApp groups the number joined")
    p.add_argument("--recharge", metavar="YYYY-MM-DD", help="attest: the day of the last monthly recharge")
    p.add_argument("--number", metavar="DIGITS",
                   help="the instance's phone number with country code: Evolution also gives a pairing code")
    p.add_argument("--wait", type=float, default=300.0, metavar="S",
                   help="how long connect waits for the instance to be open (default 300)")
    p.add_argument("--no-wait", action="store_true", help="show the QR code and return")
    p = _command(commands, "completion", "print a shell completion script", cmd_completion,
                "  oraclectl completion bash > /etc/bash_completion.d/oraclectl\n"
                "  source <(oraclectl completion bash)          # this shell only\n"
                "  oraclectl completion zsh > \"${fpath[1]}/_oraclectl\"")
    p.add_argument("shell", choices=("bash", "zsh"))
    p = _command(commands, "recovery", "what the reminders earned: orders expired, reminded, recovered, "
                "revenue, messages by status", cmd_recovery,
                "  oraclectl recovery imperio\n  oraclectl recovery imperio --since 30d\n"
                "  oraclectl --json recovery imperio")
    p.add_argument("id")
    p.add_argument("--since", type=duration_arg, default=7 * 86400.0, metavar="DURATION",
                   help="the period: 24h, 7d (default), 30d")
    campaign.add_commands(commands, _command, _service_call, UsageError)
    p = _command(commands, "events", "recent daemon events (state changes, tenants added/removed, reloads)",
                cmd_events, "  oraclectl events\n  oraclectl events -f --tenant imperio")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--tenant", help="only this tenant's events")
    p.add_argument("-n", "--recent", type=int, default=50, metavar="N",
                   help="recent events first (default 50)")


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    parser = build_parser()
    stdout, stderr, stdin = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:      # argparse: --help is 0, a usage error is 2
        return int(e.code or 0)
    if args.addr and not args.token_file:
        parser.print_usage(stderr)
        stderr.write("oraclectl: error: --addr needs --token-file (the daemon's control.token)\n")
        return USAGE
    ctx = Ctx(args, stdout, stderr, stdin)
    try:
        return args.func(ctx)
    except UsageError as e:
        ctx.err(f"oraclectl: error: {e}")
        return USAGE
    except Unreachable as e:
        ctx.err(f"oraclectl: {e}")
        return UNREACHABLE
    except Refused as e:
        ctx.err(f"oraclectl: {_code_name(e.code)}: {e.details}")
        return FAILED
    except KeyboardInterrupt:
        return 130


def _code_name(code: grpc.StatusCode) -> str:
    return code.name.lower().replace("_", " ")


if __name__ == "__main__":
    sys.exit(main())
