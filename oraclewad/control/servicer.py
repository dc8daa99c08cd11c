"""oraclewa.v1.Control: thin adapters from protobuf requests to `Operations` and back."""

from __future__ import annotations

import contextlib
import json
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry, Counter

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc
from oraclewad._proto.vocabulary import service_enum, service_name, state_enum
from oraclewad.control.bridge import SHUTTING_DOWN, Bridge, RpcFailure, invalid, rpc
from oraclewad.control.paging import page
from oraclewad.control.streams import LOG_LEVELS, TOO_SLOW, EventFeed, LineFilter, LogTail, Pipe, Streams
from oraclewad.errors import FailedPrecondition, NotFound
from oraclewad.operations import (
    EventView,
    HealthView,
    MetricsView,
    NewTenant,
    Operations,
    ProgressView,
    ReleaseView,
    ServiceView,
    SwapOptions,
    TenantView,
    WebhookSecretsView,
)
from oraclewad.tenants.ids import SERVICES

DEFAULT_ADD_TIMEOUT = 60.0
DEFAULT_SERVICE_CALL_TIMEOUT = 30.0
DEFAULT_LINES = 50
MAX_LINES = 10_000
POLL_INTERVAL = 0.2
PROGRESS_QUEUE = 4096


# ---- the vocabulary: names <-> enums ---------------------------------------------------------

def service_names(names: Iterable[str], enums: Iterable[int], field: str) -> tuple[str, ...]:
    """The services a request names: by enum when it sets any, else by name; checked either way."""
    enums = list(enums)
    if enums:
        names = [service_name(e) or f"enum {e}" for e in enums]
    names = tuple(names)
    bad = [n for n in names if n not in SERVICES]
    if bad:
        raise invalid(field, f"unknown service {bad[0]!r}: use recovery and/or broadcast")
    return names


# ---- views -> messages ---------------------------------------------------------------------

def service_state(v: ServiceView) -> pb.ServiceState:
    msg = pb.ServiceState(tenant=v.tenant, service=v.service, service_enum=service_enum(v.service),
                          state=v.state, state_enum=state_enum(v.state), restarts=v.restarts,
                          ready=v.ready, release=v.release, message=v.message)
    if v.pid is not None:
        msg.pid = v.pid
    if v.uptime_s is not None:
        msg.uptime_s = v.uptime_s
    if v.port is not None:
        msg.port = v.port
    return msg


def tenant_message(v: TenantView) -> pb.Tenant:
    return pb.Tenant(id=v.id, name=v.name, services=list(v.services),
                     service_enums=[service_enum(s) for s in v.services], release=v.release,
                     ports=dict(v.ports), webhook_url=v.webhook_url, secrets_file=v.secrets_file,
                     source_file=v.source_file, provisioned=v.provisioned, problems=list(v.problems),
                     states=[service_state(s) for s in v.states])


def secrets_message(v: WebhookSecretsView) -> pb.WebhookSecretsResponse:
    return pb.WebhookSecretsResponse(id=v.tenant, webhook_url=v.webhook_url, secret=v.secret,
                                     static_token=v.static_token, static_token_enabled=v.static_token_enabled,
                                     previous_until=list(v.previous_until), file=v.file)


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    # A JSON round trip turns anything odd (tuples, paths, numbers as keys) into Struct-able values.
    out.update(json.loads(json.dumps(dict(values), default=str)))
    return out


def health_message(v: HealthView) -> pb.ServiceHealth:
    return pb.ServiceHealth(tenant=v.tenant, service=v.service, status=v.status,
                            checks=_struct(v.checks), detail=v.detail)


def metrics_message(v: MetricsView) -> pb.ServiceMetrics:
    return pb.ServiceMetrics(tenant=v.tenant, service=v.service,
                             figures={k: float(x) for k, x in v.figures.items()})


def event_message(v: EventView) -> pb.Event:
    return pb.Event(ts=v.ts, tenant=v.tenant, service=v.service, kind=v.kind, state=v.state,
                    state_enum=state_enum(v.state), message=v.message)


def release_message(v: ReleaseView) -> pb.Release:
    return pb.Release(version=v.version, python=v.python, schema=dict(v.schema), tenants=list(v.tenants),
                      path=v.path)


def progress_message(v: ProgressView) -> pb.DeployProgress:
    return pb.DeployProgress(tenant=v.tenant, service=v.service, phase=v.phase, elapsed_s=v.elapsed_s,
                             health=v.health, message=v.message, from_version=v.from_version,
                             to_version=v.to_version)


def swap_options(msg: pb.DeployRequest | pb.RollbackRequest) -> SwapOptions:
    return SwapOptions(
        healthy_deadline=msg.healthy_deadline_s if msg.HasField("healthy_deadline_s") else None,
        min_healthy_time=msg.min_healthy_time_s if msg.HasField("min_healthy_time_s") else None)


def new_tenant(msg: pb.NewTenant) -> NewTenant:
    """Validate what only the request can get wrong; the daemon validates the rest like a file."""
    if not msg.id:
        raise invalid("id", "is required (a letter first, then letters, digits, '_' or '-')")
    services = service_names(msg.services, msg.service_enums, "services")
    if len(set(services)) != len(services):
        raise invalid("services", "lists a service twice")
    try:
        extra = tomllib.loads(msg.extra_toml) if msg.extra_toml else {}
    except tomllib.TOMLDecodeError as e:
        raise invalid("extra_toml", f"is not valid TOML: {e}") from None
    return NewTenant(id=msg.id, name=msg.name, services=services or SERVICES,
                     release=msg.release, evolution_url=msg.evolution_url,
                     evolution_api_key=msg.evolution_api_key,
                     recovery_instances=tuple(msg.recovery_instances),
                     broadcast_instances=tuple(msg.broadcast_instances),
                     extra=extra)


def _batches(lines: list[str], max_bytes: int = 256 * 1024) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line) + 8
        if size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


R = TypeVar("R")


def _service_keys(views: Any) -> list[str]:
    """Page keys of per-service rows (an invalid file's row has no service: its file stem)."""
    return [f"{v.tenant}/{v.service}" for v in views]


def _required(value: str, field: str) -> str:
    if not value:
        raise invalid(field, "is required")
    return value


def requests_counter(registry: CollectorRegistry) -> Counter:
    return Counter("oraclewa_control_requests", "Control-plane (gRPC) requests by method and status code",
                   ["method", "code"], registry=registry)


class ControlServicer(pb_grpc.ControlServicer):
    def __init__(self, ops: Operations, bridge: Bridge, streams: Streams, feed: EventFeed,
                 requests: Counter | None = None) -> None:
        self.requests = requests        # oraclewa_control_requests_total{method,code}, counted by @rpc
        self.ops = ops
        self.bridge = bridge
        self.streams = streams
        self.feed = feed

    # ---- tenants ----

    @rpc
    def AddTenant(self, request: pb.AddTenantRequest, context: grpc.ServicerContext) -> pb.Tenant:
        if not request.HasField("tenant"):
            raise invalid("tenant", "is required")
        new = new_tenant(request.tenant)
        timeout = request.timeout_s if request.timeout_s > 0 else DEFAULT_ADD_TIMEOUT
        # Not cancelled with the client's deadline: a half-done add is worse than a late answer.
        view = self.bridge.run(self.ops.add_tenant, new, wait=request.wait, timeout=timeout)
        return tenant_message(view)

    @rpc
    def RepairTenant(self, request: pb.RepairTenantRequest,
                     context: grpc.ServicerContext) -> pb.RepairTenantResponse:
        actions = self.bridge.run(self.ops.repair_tenant, _required(request.id, "id"))
        return pb.RepairTenantResponse(actions=list(actions))

    def _actions(self, fn: Callable[..., Any], tenant_id: str, **kwargs: Any) -> pb.RemoveTenantResponse:
        actions = self.bridge.run(fn, _required(tenant_id, "id"), **kwargs)
        return pb.RemoveTenantResponse(actions=list(actions))

    @rpc
    def RemoveTenant(self, request: pb.RemoveTenantRequest,
                     context: grpc.ServicerContext) -> pb.RemoveTenantResponse:
        return self._actions(self.ops.remove_tenant, request.id, purge=request.purge)

    @rpc
    def ListRemovedTenants(self, request: pb.ListRemovedTenantsRequest,
                           context: grpc.ServicerContext) -> pb.ListRemovedTenantsResponse:
        views = self.bridge.run(self.ops.removed_tenants)
        out = []
        for v in views:
            msg = pb.RemovedTenant(id=v.id, size_bytes=v.size_bytes, kept=list(v.kept))
            if v.removed_at is not None:
                msg.removed_at = v.removed_at
            out.append(msg)
        items, token = page(out, [v.id for v in views], request.page_size, request.page_token)
        return pb.ListRemovedTenantsResponse(tenants=items, next_page_token=token)

    @rpc
    def PurgeTenant(self, request: pb.PurgeTenantRequest,
                    context: grpc.ServicerContext) -> pb.RemoveTenantResponse:
        return self._actions(self.ops.purge_tenant, request.id)

    @rpc
    def RestoreTenant(self, request: pb.RestoreTenantRequest, context: grpc.ServicerContext) -> pb.Tenant:
        timeout = request.timeout_s if request.timeout_s > 0 else DEFAULT_ADD_TIMEOUT
        view = self.bridge.run(self.ops.restore_tenant, _required(request.id, "id"), wait=request.wait,
                               timeout=timeout)
        return tenant_message(view)

    @rpc
    def ListTenants(self, request: pb.ListTenantsRequest,
                    context: grpc.ServicerContext) -> pb.ListTenantsResponse:
        views = self.bridge.run_sync(self.ops.list_tenants)
        items, token = page([tenant_message(v) for v in views], [v.id for v in views],
                            request.page_size, request.page_token)
        return pb.ListTenantsResponse(tenants=items, next_page_token=token)

    @rpc
    def GetTenant(self, request: pb.GetTenantRequest, context: grpc.ServicerContext) -> pb.Tenant:
        return tenant_message(self.bridge.run_sync(self.ops.get_tenant, _required(request.id, "id")))

    # ---- services ----

    @rpc
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        views = self.bridge.run_sync(self.ops.status, request.tenant or None)
        return self._paged(pb.StatusResponse, [service_state(v) for v in views], views, request)

    @rpc
    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthResponse:
        views = self.bridge.run(self.ops.health, request.tenant or None, deadline=context.time_remaining())
        return self._paged(pb.HealthResponse, [health_message(v) for v in views], views, request)

    @staticmethod
    def _paged(response: Callable[..., R], items: list[Any], views: Sequence[Any], request: Any) -> R:
        """One page of per-service answers, in the order of their tenant/service keys."""
        shown, token = page(items, _service_keys(views), request.page_size, request.page_token)
        return response(services=shown, next_page_token=token)

    def _verb(self, verb: Callable[..., Any], request: pb.ServiceRequest) -> pb.StatusResponse:
        views = self.bridge.run(verb, _required(request.tenant, "tenant"), request.service or None)
        return pb.StatusResponse(services=[service_state(v) for v in views])

    @rpc
    def Start(self, request: pb.ServiceRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        return self._verb(self.ops.start, request)

    @rpc
    def Stop(self, request: pb.ServiceRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        return self._verb(self.ops.stop, request)

    @rpc
    def Restart(self, request: pb.ServiceRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        return self._verb(self.ops.restart, request)

    @rpc
    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext) -> pb.ReloadResponse:
        v = self.bridge.run(self.ops.reload)
        return pb.ReloadResponse(added=list(v.added), removed=list(v.removed), restarted=list(v.restarted),
                                 unchanged=list(v.unchanged), problems=list(v.problems))

    @rpc
    def ServiceCall(self, request: pb.ServiceCallRequest,
                    context: grpc.ServicerContext) -> pb.ServiceCallResponse:
        service = service_name(request.service_enum) if request.service_enum else request.service
        if service not in SERVICES:
            raise invalid("service", f"must be one of {', '.join(SERVICES)}")
        timeout = request.timeout_s if request.timeout_s > 0 else DEFAULT_SERVICE_CALL_TIMEOUT
        answer = self.bridge.run(self.ops.service_call, _required(request.tenant, "tenant"), service,
                                 request.method, request.path or "/", request.body_json, timeout,
                                 deadline=context.time_remaining())
        return pb.ServiceCallResponse(status=answer.status, body_json=answer.body_json)

    @rpc
    def WebhookSecrets(self, request: pb.WebhookSecretsRequest,
                       context: grpc.ServicerContext) -> pb.WebhookSecretsResponse:
        return secrets_message(self.bridge.run_sync(self.ops.webhook_secrets, _required(request.id, "id")))

    @rpc
    def RotateWebhookSecret(self, request: pb.RotateWebhookSecretRequest,
                            context: grpc.ServicerContext) -> pb.WebhookSecretsResponse:
        return secrets_message(self.bridge.run(self.ops.rotate_webhook_secret, _required(request.id, "id"),
                                               request.overlap_s, deadline=context.time_remaining()))

    @rpc
    def Metrics(self, request: pb.MetricsRequest, context: grpc.ServicerContext) -> pb.MetricsResponse:
        views = self.bridge.run(self.ops.metrics, request.tenant or None, deadline=context.time_remaining())
        return self._paged(pb.MetricsResponse, [metrics_message(v) for v in views], views, request)

    # ---- releases ----

    def _progress(self, context: grpc.ServicerContext, method: str, fn: Any, *args: Any,
                  **kwargs: Any) -> Iterator[pb.DeployProgress]:
        """Run a swap on the daemon and stream its progress. The swap is never cancelled by the
        client going away: a half-done swap is worse than an unread progress line."""
        stream = self.streams.open(context, method)
        pipe = Pipe(PROGRESS_QUEUE)
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["view"] = self.bridge.run(fn, *args, report=pipe.put, **kwargs)
            except BaseException as e:  # handed to the stream's thread, which maps it to a status
                outcome["error"] = e
            finally:
                pipe.close()

        worker = threading.Thread(target=work, name=f"{method} worker", daemon=True)
        worker.start()
        try:
            while True:
                items = pipe.get(POLL_INTERVAL)
                if items is None:
                    break
                if stream.dropped or not context.is_active():
                    continue        # keep draining: the swap goes on without its watcher
                for item in items:
                    with stream.sending():
                        yield progress_message(item)
            worker.join()
            if "error" in outcome:
                raise outcome["error"]
            view = outcome["view"]
            yield pb.DeployProgress(tenant=view.tenant, phase="summary", message=view.message,
                                    from_version=view.from_version, to_version=view.to_version)
        finally:
            self.streams.close(stream)

    @rpc
    def Deploy(self, request: pb.DeployRequest, context: grpc.ServicerContext) -> Iterator[pb.DeployProgress]:
        version = _required(request.version, "version")
        options = swap_options(request)
        if request.all:
            if request.tenant:
                raise invalid("tenant", "leave it empty with `all` (every tenant)")
            yield from self._progress(context, "Deploy", self.ops.deploy_all, version, canary=request.canary,
                                      max_parallel=request.max_parallel, dry_run=request.dry_run,
                                      options=options)
            return
        if request.dry_run:
            raise invalid("dry_run", "only with `all` (a fleet rollout)")
        yield from self._progress(context, "Deploy", self.ops.deploy, _required(request.tenant, "tenant"),
                                  version, rollback=False, options=options)

    @rpc
    def Rollback(self, request: pb.RollbackRequest,
                 context: grpc.ServicerContext) -> Iterator[pb.DeployProgress]:
        yield from self._progress(context, "Rollback", self.ops.deploy, _required(request.tenant, "tenant"),
                                  request.version, rollback=True, options=swap_options(request))

    @rpc
    def History(self, request: pb.HistoryRequest, context: grpc.ServicerContext) -> pb.HistoryResponse:
        entries = self.bridge.run_sync(self.ops.history, _required(request.tenant, "tenant"))
        items, token = page([
            pb.HistoryEntry(ts=e.ts, action=e.action, from_version=e.from_version, to_version=e.to_version,
                            result=e.result, service=e.service, reason=e.reason, duration_s=e.duration_s,
                            stable=e.stable) for e in entries],
            [f"{e.ts!r} {e.service}" for e in entries], request.page_size, request.page_token)
        return pb.HistoryResponse(entries=items, next_page_token=token)

    @rpc
    def ListReleases(self, request: pb.ListReleasesRequest,
                     context: grpc.ServicerContext) -> pb.ListReleasesResponse:
        views = self.bridge.run_sync(self.ops.releases)
        return pb.ListReleasesResponse(releases=[release_message(v) for v in views])

    @rpc
    def InstallRelease(self, request: pb.InstallReleaseRequest, context: grpc.ServicerContext) -> pb.Release:
        view = self.bridge.run(self.ops.install_release, _required(request.path, "path"),
                               _required(request.version, "version"), find_links=list(request.find_links),
                               share_packages=request.share_packages)
        return release_message(view)

    @rpc
    def RemoveRelease(self, request: pb.RemoveReleaseRequest,
                      context: grpc.ServicerContext) -> pb.RemoveReleaseResponse:
        message = self.bridge.run(self.ops.remove_release, _required(request.version, "version"))
        return pb.RemoveReleaseResponse(message=message)

    # ---- streams ----

    def _log_tails(self, request: pb.TailLogsRequest) -> list[LogTail]:
        channel = request.channel or "combined"
        if request.tenant:
            tenants = [request.tenant]
        else:
            if request.service:
                raise invalid("service", "needs a tenant (every tenant's services are shown without one)")
            tenants = [t.id for t in self.bridge.run_sync(self.ops.list_tenants)]
        if request.tenant and request.service:
            path = self.bridge.run_sync(self.ops.log_file, request.tenant, request.service, channel)
            return [LogTail(path, request.service, request.tenant)]
        tails, missing = [], None
        for tenant in tenants:
            for service in self.bridge.run_sync(self.ops.get_tenant, tenant).services:
                try:
                    path = self.bridge.run_sync(self.ops.log_file, tenant, service, channel)
                    tails.append(LogTail(path, service, tenant))
                except NotFound as e:       # one service without this log yet: show the others
                    missing = e
        if not tails:
            raise missing or NotFound(f"tenant {request.tenant!r} runs no services" if request.tenant
                                      else "no tenant has logs yet")
        return tails

    @rpc
    def TailLogs(self, request: pb.TailLogsRequest, context: grpc.ServicerContext) -> Iterator[pb.LogLines]:
        lines = request.lines if request.HasField("lines") else DEFAULT_LINES
        if not 0 <= lines <= MAX_LINES:
            raise invalid("lines", f"must be between 0 and {MAX_LINES}")
        level = request.level.lower()
        if level and level not in LOG_LEVELS:
            raise invalid("level", "must be one of debug, info, warning, error, critical")
        since = request.since if request.HasField("since") else None
        tails = self._log_tails(request)
        filters = {id(tail): LineFilter(level, since) for tail in tails}
        stream = self.streams.open(context, "TailLogs")
        unwatch: list[Callable[[], None]] = []
        if request.follow:
            self.bridge.run_sync(self._watch, tails, request.channel or "combined", unwatch)

        def kept(tail: LogTail, got: list[str]) -> list[str]:
            f = filters[id(tail)]
            return [line for line in got if f.keep(line)] if f.active else got

        try:
            for tail in tails:
                # With a filter, look further back so that up to `lines` matching lines are shown.
                wanted = MAX_LINES if filters[id(tail)].active and lines else lines
                backlog = kept(tail, tail.last_lines(wanted, keep_partial=request.follow))
                for batch in _batches(backlog[-lines:] if lines else []):
                    with stream.sending():
                        yield pb.LogLines(tenant=tail.tenant, service=tail.service, lines=batch)
            while request.follow:
                if self.bridge.closing.is_set():
                    raise RpcFailure(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                if stream.dropped or not context.is_active():
                    return
                got = False
                for tail in tails:
                    for batch in _batches(kept(tail, tail.poll())):
                        got = True
                        with stream.sending():
                            yield pb.LogLines(tenant=tail.tenant, service=tail.service, lines=batch)
                if not got:
                    self.bridge.closing.wait(POLL_INTERVAL)   # wakes at once on shutdown
        finally:
            if unwatch:
                with contextlib.suppress(RpcFailure):   # the daemon may be shutting down
                    self.bridge.run_sync(lambda: [stop() for stop in unwatch])
            for tail in tails:
                tail.close()
            self.streams.close(stream)

    def _watch(self, tails: list[LogTail], channel: str, unwatch: list[Callable[[], None]]) -> None:
        """On the daemon's thread, so no rotation falls between opening a file and subscribing."""
        for tail in tails:
            unwatch.append(self.ops.watch_log(tail.tenant, tail.service, channel, tail.new_file))
            tail.watched = True
            tail.open_now()

    def _known_tenant(self, tenant: str) -> None:
        """NotFound unless the daemon has the tenant (running or invalid) or events about it."""
        if tenant == "programs" or self.feed.mentions(tenant):
            return
        try:
            self.bridge.run_sync(self.ops.get_tenant, tenant)
        except FailedPrecondition:   # its file is invalid: still a tenant the operator has
            return

    @rpc
    def WatchEvents(self, request: pb.WatchEventsRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.Event]:
        recent = request.recent if request.HasField("recent") else DEFAULT_LINES
        if recent < 0:
            raise invalid("recent", "must be 0 or more")
        if request.tenant:
            self._known_tenant(request.tenant)
        stream = self.streams.open(context, "WatchEvents")

        def overflow() -> None:
            stream.drop(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_SLOW)

        backlog, sub = self.feed.subscribe(request.tenant, recent, request.follow, overflow)
        try:
            for event in backlog:
                with stream.sending():
                    yield event_message(event)
            while sub is not None:
                if self.bridge.closing.is_set():
                    raise RpcFailure(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                if stream.dropped or not context.is_active():
                    return
                items = sub.pipe.get(POLL_INTERVAL)
                if items is None:
                    if sub.pipe.overflowed:
                        raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_SLOW)
                    raise RpcFailure(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                for event in items:
                    with stream.sending():
                        yield event_message(event)
        finally:
            if sub is not None:
                self.feed.unsubscribe(sub)
            self.streams.close(stream)
