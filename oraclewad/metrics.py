"""The daemon's Prometheus endpoint: supervision figures of every service plus each child's own metrics.

    /metrics                 the daemon's figures and every child's, labelled tenant/service
    /tenants/<id>/metrics    one tenant's (optionally behind its bearer token: [metrics] token_file)
    /healthz                 the daemon's event loop answers
    /readyz                  the first start of the fleet is done and the daemon is not stopping

Everything is read at scrape time through `Operations`, so nothing is stale and nothing costs
between scrapes. Children are scraped (by the fleet, oraclewad.scrape) concurrently over their
admin sockets, each bounded by `[metrics] child_timeout`: a hung child costs at most that, shows as
`oraclewa_child_scrape_success 0` and `oraclewa_child_scrape_timeouts_total`, and never fails
the scrape. Text or OpenMetrics by the request's Accept header (prometheus_client's choice).
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import ALLOWUTF8
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from oraclewad.errors import FailedPrecondition, NotFound
from oraclewad.operations import DaemonFigures, MetricsView, Operations
from oraclewad.scrape import merge
from oraclewad.supervisor.status import State

log = logging.getLogger("oraclewad.metrics")

# Always exported (0 or 1), so a query for a state that is not current still finds a series.
STATES = tuple(s for s in State if s != State.INVALID)   # an invalid file has no service to export
REASONS = ("exit", "signal", "start_timeout", "watchdog", "spawn_failed")


def service_families(views: Sequence[MetricsView]) -> Iterator[Metric]:
    """The daemon's per-service figures: supervision state and /proc readings."""
    labels = ["tenant", "service"]
    up = GaugeMetricFamily("oraclewa_service_up", "1 when the service's process runs and sent READY=1",
                           labels=labels)
    ready = GaugeMetricFamily("oraclewa_service_ready", "1 when the current process sent READY=1",
                              labels=labels)
    state = GaugeMetricFamily("oraclewa_service_state", "1 for the supervision state the service is in",
                              labels=[*labels, "state"])
    restarts = CounterMetricFamily("oraclewa_service_restarts",
                                   "Automatic restarts since the daemon started, by cause",
                                   labels=[*labels, "reason"])
    exit_code = GaugeMetricFamily("oraclewa_service_last_exit_code",
                                  "Exit code of the last exit (negative: killed by that signal number)",
                                  labels=labels)
    start = GaugeMetricFamily("oraclewa_service_start_duration_seconds",
                              "Seconds from spawn to READY=1 of the current process", labels=labels)
    uptime = GaugeMetricFamily("oraclewa_service_uptime_seconds", "Seconds since the current process started",
                               labels=labels)
    release = GaugeMetricFamily("oraclewa_service_release_info", "The release a service runs (value 1)",
                                labels=[*labels, "release"])
    rss = GaugeMetricFamily("oraclewa_service_resident_memory_bytes", "Resident memory (RSS) of the process",
                            labels=labels)
    pss = GaugeMetricFamily("oraclewa_service_proportional_memory_bytes",
                            "Proportional set size (PSS: shared pages divided among their users)",
                            labels=labels)
    cpu = CounterMetricFamily("oraclewa_service_cpu_seconds",
                              "User and system CPU time of the current process", labels=labels)
    log_bytes = CounterMetricFamily("oraclewa_service_log_bytes",
                                    "Bytes the daemon wrote to the service's combined.log", labels=labels)
    for v in views:
        key = [v.tenant, v.service]
        f = v.figures
        is_ready = bool(f.get("ready"))
        up.add_metric(key, 1.0 if is_ready and v.state == "running" else 0.0)
        ready.add_metric(key, 1.0 if is_ready else 0.0)
        for name in (*STATES, *([v.state] if v.state not in STATES else [])):
            state.add_metric([*key, name], 1.0 if v.state == name else 0.0)
        for reason in REASONS:
            restarts.add_metric([*key, reason], float(v.restart_reasons.get(reason, 0)))
        if v.release:
            release.add_metric([*key, v.release], 1.0)
        uptime.add_metric(key, f.get("uptime_s", 0.0))
        for family, name in ((exit_code, "last_exit_code"), (start, "start_seconds"), (rss, "rss_bytes"),
                             (pss, "pss_bytes"), (cpu, "cpu_seconds"), (log_bytes, "log_bytes")):
            if name in f:
                family.add_metric(key, f[name])
    yield from (up, ready, state, restarts, exit_code, start, uptime, release, rss, pss, cpu, log_bytes)


def scrape_families(views: Sequence[MetricsView]) -> Iterator[Metric]:
    labels = ["tenant", "service"]
    duration = GaugeMetricFamily("oraclewa_child_scrape_duration_seconds",
                                 "How long reading this child's own /metrics took", labels=labels)
    success = GaugeMetricFamily("oraclewa_child_scrape_success",
                                "1 if the child's /metrics answered within the timeout", labels=labels)
    timeouts = CounterMetricFamily("oraclewa_child_scrape_timeouts",
                                   "Scrapes of the child's /metrics that hit [metrics] child_timeout",
                                   labels=labels)
    errors = CounterMetricFamily("oraclewa_child_scrape_errors",
                                 "Scrapes of the child's /metrics that failed (refused, bad answer)",
                                 labels=labels)
    for v in views:
        if not v.scrape:
            continue
        key = [v.tenant, v.service]
        duration.add_metric(key, v.figures.get("scrape_seconds", 0.0))
        success.add_metric(key, 1.0 if v.scrape == "ok" else 0.0)
        timeouts.add_metric(key, v.figures.get("scrape_timeouts", 0.0))
        errors.add_metric(key, v.figures.get("scrape_errors", 0.0))
    yield from (duration, success, timeouts, errors)


def daemon_families(figures: DaemonFigures, timeout: float) -> Iterator[Metric]:
    tenants = GaugeMetricFamily("oraclewa_tenants", "Tenants by state", labels=["state"])
    for name, count in figures.tenants.items():
        tenants.add_metric([name], float(count))
    yield tenants
    yield GaugeMetricFamily("oraclewa_config_problems", "Problems in the config and tenant files",
                            value=float(figures.config_problems))
    yield CounterMetricFamily("oraclewa_provisioning_failures",
                              "Tenant provisioning attempts that failed or found a server unavailable",
                              value=float(figures.provisioning_failures))
    if figures.log_disk_free_bytes is not None and figures.log_disk_size_bytes is not None:
        yield GaugeMetricFamily("oraclewa_log_disk_free_bytes",
                                "Space left for unprivileged users on the filesystem of log_dir",
                                value=figures.log_disk_free_bytes)
        yield GaugeMetricFamily("oraclewa_log_disk_size_bytes", "Size of the filesystem of log_dir",
                                value=figures.log_disk_size_bytes)
    keys = GaugeMetricFamily("oraclewa_tenant_redis_keys", "Keys under the tenant's Redis prefixes",
                             labels=["tenant"])
    memory = GaugeMetricFamily("oraclewa_tenant_redis_memory_bytes",
                               "Bytes Redis uses for the tenant's keys (MEMORY USAGE, sampled)",
                               labels=["tenant"])
    for tenant, (count, size) in sorted(figures.redis_usage.items()):
        keys.add_metric([tenant], float(count))
        memory.add_metric([tenant], float(size))
    yield keys
    yield memory
    yield GaugeMetricFamily("oraclewa_child_scrape_timeout_seconds",
                            "How long a scrape waits for each child ([metrics] child_timeout)", value=timeout)


class _Fixed:
    """A collector over metrics gathered beforehand (the encoders want a `collect()`)."""

    def __init__(self, parts: Iterable[Iterable[Metric]]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part


def _encoder(accept: str) -> tuple[Callable[[Any], bytes], str]:
    """prometheus_client's choice of format for this Accept header. Every name we expose is a
    legacy (ASCII) Prometheus name (the child parser refuses others), so all escaping schemes
    write the same bytes; for OpenMetrics the "allow-utf-8" one skips a per-character loop
    that costs ~120 ms per scrape of 200 children."""
    encoder, content_type = choose_encoder(accept)
    if isinstance(encoder, functools.partial) and "escaping" in encoder.keywords:
        keywords = {**encoder.keywords, "escaping": ALLOWUTF8}
        encoder = functools.partial(encoder.func, *encoder.args, **keywords)
    return encoder, content_type


class MetricsApp:
    def __init__(self, ops: Operations, *, child_timeout: float, registry: CollectorRegistry | None,
                 ready: Callable[[], bool]) -> None:
        self.ops = ops
        self.child_timeout = child_timeout
        self.registry = registry or CollectorRegistry()
        self.ready = ready
        self.duration = Histogram("oraclewa_daemon_scrape_duration_seconds",
                                  "Time to answer /metrics, children included",
                                  buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                                  registry=self.registry)

    async def _expose(self, request: Request, tenant: str | None) -> Response:
        start = time.perf_counter()
        views = await self.ops.metrics(tenant)      # children's own metrics included, each bounded
        encoder, content_type = _encoder(request.headers.get("accept", ""))
        parts: list[Iterable[Metric]] = [service_families(views), scrape_families(views),
                                         merge(v.families for v in views)]
        if tenant is None:
            parts += [daemon_families(self.ops.daemon_figures(), self.child_timeout),
                      list(self.registry.collect())]
        # Encoding ~10^4 samples (200 children) is the costly part: a worker thread keeps the
        # event loop, and with it supervision, responsive meanwhile.
        body = await trio.to_thread.run_sync(encoder, _Fixed(parts))
        if tenant is None:
            self.duration.observe(time.perf_counter() - start)
        return Response(body, headers={"Content-Type": content_type})

    async def metrics(self, request: Request) -> Response:
        return await self._expose(request, None)

    async def tenant_metrics(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        try:
            token = self.ops.metrics_token(tenant)
        except NotFound:
            return PlainTextResponse(f"no tenant {tenant[:64]!r}\n", status_code=404)
        except FailedPrecondition as e:
            log.error("metrics: %s", e)
            return PlainTextResponse(f"tenant {tenant!r}: metrics unavailable (see the daemon's log)\n",
                                     status_code=503)
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return PlainTextResponse("a bearer token is required: Authorization: Bearer <token>\n",
                                         status_code=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="oraclewa"'})
        return await self._expose(request, tenant)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(self, request: Request) -> Response:
        if self.ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: starting or stopping\n", status_code=503)

    def app(self) -> Starlette:
        # Routes, not Mounts: a Mount answers /metrics with a redirect to /metrics/.
        return Starlette(routes=[
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/tenants/{tenant}/metrics", self.tenant_metrics, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
        ])


async def serve_metrics(listen: str, ops: Operations, *, child_timeout: float = 1.0,
                        registry: CollectorRegistry | None = None,
                        ready: Callable[[], bool] = lambda: True,
                        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the endpoint on `listen` (HOST:PORT) until cancelled. `registry` holds daemon-wide
    metrics kept elsewhere (the control plane's request counter)."""
    app = MetricsApp(ops, child_timeout=child_timeout, registry=registry, ready=ready)
    config = HypercornConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = log
    log.info("metrics: serving on http://%s/metrics", listen)
    await serve(app.app(), config, task_status=task_status)  # type: ignore[arg-type]  # Starlette is ASGI
