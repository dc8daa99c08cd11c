"""The daemon's Prometheus endpoint: per-service supervision figures, read live from the fleet.

Each child also serves its own registry on its admin socket; aggregating those into this
endpoint arrives with the metrics issue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from oraclewad.operations import ServiceView

if TYPE_CHECKING:
    from oraclewad.fleet import Fleet

log = logging.getLogger("oraclewad.metrics")

STATES = ("starting", "running", "backoff", "degraded", "stopping", "stopped", "unavailable", "pending")


class FleetCollector(Collector):
    """Collects at scrape time, so the figures are never stale and cost nothing between scrapes."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        labels = ["tenant", "service"]
        up = GaugeMetricFamily("owa_service_up", "1 when the service is running and ready", labels=labels)
        restarts = GaugeMetricFamily("owa_service_restarts", "automatic restarts since the daemon started",
                                     labels=labels)
        uptime = GaugeMetricFamily("owa_service_uptime_seconds", "seconds since the current process started",
                                   labels=labels)
        state = GaugeMetricFamily("owa_service_state", "1 for the state the service is in",
                                  labels=[*labels, "state"])
        views: list[ServiceView] = [v for v in self.fleet.status() if v.state != "invalid"]
        for v in views:
            key = [v.tenant, v.service]
            up.add_metric(key, 1.0 if v.ready and v.state == "running" else 0.0)
            restarts.add_metric(key, float(v.restarts))
            uptime.add_metric(key, float(v.uptime_s or 0.0))
            for name in STATES:
                state.add_metric([*key, name], 1.0 if v.state == name else 0.0)
        yield from (up, restarts, uptime, state)
        yield GaugeMetricFamily("owa_tenants", "tenants running (valid tenant files)",
                                value=float(len(self.fleet.tenants)))
        yield GaugeMetricFamily("owa_config_problems", "problems in the config and tenant files",
                                value=float(len(self.fleet.problems)))


async def serve_metrics(listen: str, fleet: Fleet, *,
                        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """GET /metrics on `listen` (HOST:PORT) until cancelled."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(FleetCollector(fleet))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # A Route, not a Mount: a Mount answers /metrics with a redirect to /metrics/.
    app = Starlette(routes=[Route("/metrics", metrics)])
    config = HypercornConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = log
    log.info("metrics: serving on http://%s/metrics", listen)
    await serve(app, config, task_status=task_status)  # type: ignore[arg-type]  # Starlette is ASGI
