"""What the admin unix socket serves (/healthz, /metrics), and the request metrics of the public app."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from oraclewad.services.series import kept_children
from oraclewad.services.web import json_error_handlers

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from oraclewad.services.context import ServiceContext

PROBE_TIMEOUT = 2.0
# Seconds a schema check that passed is trusted: the runtime re-runs the checks every 2 s
# (contract.HEALTH_INTERVAL), and the schema check is most of a probe's statements, in every
# child. PostgreSQL itself is still asked every time; a failing check is re-run every time.
SCHEMA_EVERY = 30.0
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

http_log = logging.getLogger("oraclewad.services.http")

MAX_LOGGED_PATH = 200       # characters of a request path that reach the access log


class AccessLogLimiter:
    """A token bucket for access lines: `burst` lines at once, then `rate` per second. What it
    holds back is counted and reported in the next line that passes, so a flood of requests
    (scanners, long paths) cannot rotate the useful history out of the logs."""

    def __init__(self, rate: float = 50.0, burst: float = 200.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.updated = clock()
        self.held_back = 0          # since the last line that passed
        self.suppressed_total = 0

    def allow(self) -> int | None:
        """None: drop this line. Else the number of lines dropped before it (usually 0)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            self.held_back += 1
            self.suppressed_total += 1
            return None
        self.tokens -= 1
        dropped, self.held_back = self.held_back, 0
        return dropped


def loggable_path(path: str) -> str:
    if len(path) <= MAX_LOGGED_PATH:
        return path
    return f"{path[:MAX_LOGGED_PATH]}...(+{len(path) - MAX_LOGGED_PATH} chars)"


class HttpMetrics:
    """ASGI middleware: counts and times requests by route template (never the raw path, which
    scanners would turn into unbounded label values), and writes one access line per request."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("oraclewa_http_requests", "HTTP requests served by the public app",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("oraclewa_http_request_duration_seconds", "Time to serve a request",
                                 ["route", "status"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("oraclewa_http_requests_in_flight", "Requests being served", registry=registry)
        self.access_limit = AccessLogLimiter()
        # Routes, methods and statuses are bounded: the children are kept (services/series.py).
        self._requests, self._latency = kept_children(self.requests), kept_children(self.latency)
        self.suppressed = Counter("oraclewa_http_access_log_suppressed",
                                  "Access-log lines not written (rate limit)", registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app dies before answering, hypercorn answers 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.in_flight.dec()
            # Starlette's router leaves the matched route in the (shared) scope.
            client = scope.get("client")
            self.record(getattr(scope.get("route"), "path", None) or "<unmatched>", scope["method"], status,
                        time.perf_counter() - start, scope["path"], str(client[0]) if client else None)

    def record(self, route: str, method: str, status: int, elapsed: float, path: str,
               client: str | None) -> None:
        """One request served: its series and (rate-limited) access line. Also called by the
        lean HTTP/1.1 server (services/http1.py) for the routes it answers itself."""
        method = method if method in _METHODS else "OTHER"
        code = str(status)
        self._requests(route, method, code).inc()
        self._latency(route, code).observe(elapsed)
        dropped = self.access_limit.allow()
        if dropped is None:
            self.suppressed.inc()
            return
        fields = {
            # no query string: it can carry tokens; the path capped: it comes from anyone
            "method": method, "path": loggable_path(path),
            "route": route, "status": status, "duration_ms": round(elapsed * 1000, 2),
            "client": client[:64] if client else None,
        }
        if dropped:
            fields["suppressed_before"] = dropped   # lines the rate limit held back
        http_log.info("request", extra=fields)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

SchemaProbe = Callable[[Any], str]  # (psycopg connection) -> detail; raises when the schema is wrong


class Health:
    """Dependency checks for /healthz. Postgres or schema failing: "failing" (no store of record);
    only Redis failing: "degraded". Unconfigured dependencies are skipped, not failures. A service's
    own checks (ctx.health_checks, e.g. "instances": no instance can send) failing: "failing"."""

    def __init__(self, ctx: ServiceContext, schema_probe: SchemaProbe | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.schema_probe = schema_probe
        self.clock = clock
        self._schema_passed: tuple[float, dict[str, Any]] | None = None   # (when, the passing result)
        # One probe thread per dependency at most: a hung server must not pile up threads.
        self._pg_limiter = trio.CapacityLimiter(1)
        self._redis_limiter = trio.CapacityLimiter(1)
        # The last failure of each check, kept after it recovers: what `oraclectl health` shows
        # for a dependency that flapped between two looks.
        self._last_errors: dict[str, tuple[float, str]] = {}

    async def snapshot(self) -> tuple[int, dict[str, Any]]:
        checks: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._postgres, checks)
            nursery.start_soon(self._redis, checks)
        for name, check in self.ctx.health_checks.items():
            checks[name] = check()
        extra_failing = any(not checks[name]["ok"] for name in self.ctx.health_checks)
        now = time.time()
        for name, check in checks.items():
            if not check["ok"]:
                self._last_errors[name] = (now, check["detail"])
            if name in self._last_errors:
                at, detail = self._last_errors[name]
                check["last_error"], check["last_error_at"] = detail, round(at, 3)
        if not (checks["postgres"]["ok"] and checks["schema"]["ok"]) or extra_failing:
            status = "failing"
        elif not checks["redis"]["ok"]:
            status = "degraded"
        else:
            status = "ok"
        ctx = self.ctx
        body = {
            "status": status, "tenant": ctx.tenant, "service": ctx.service, "release": ctx.release,
            "pid": os.getpid(), "uptime_s": round(time.monotonic() - ctx.started_at, 3), "checks": checks,
        }
        return (200 if status == "ok" else 503), body

    async def _postgres(self, checks: dict[str, Any]) -> None:
        pool = self.ctx.pg
        if pool is None:
            checks["postgres"] = checks["schema"] = _skipped()
            return
        probe = self.schema_probe

        def run() -> tuple[dict[str, Any], dict[str, Any]]:
            start = time.perf_counter()
            with pool.connection(timeout=PROBE_TIMEOUT) as conn:
                conn.execute("SELECT 1")
                pg = _result(True, "SELECT 1", start)
                if probe is None:
                    return pg, _skipped()
                passed = self._schema_passed
                if passed is not None and 0 <= self.clock() - passed[0] < SCHEMA_EVERY:
                    return pg, dict(passed[1])
                start = time.perf_counter()
                try:
                    schema = _result(True, probe(conn), start)
                except Exception as exc:
                    self._schema_passed = None
                    return pg, _result(False, _one_line(exc), start)
                self._schema_passed = (self.clock(), schema)
                return pg, schema

        start = time.perf_counter()
        result = await _bounded(run, self._pg_limiter)
        if isinstance(result, BaseException):
            checks["postgres"] = _result(False, _one_line(result), start)
            checks["schema"] = {"ok": False, "detail": "not checked: postgres unavailable",
                                "latency_ms": None}
        else:
            checks["postgres"], checks["schema"] = result

    async def _redis(self, checks: dict[str, Any]) -> None:
        client = self.ctx.redis
        if client is None:
            checks["redis"] = _skipped()
            return
        start = time.perf_counter()
        result = await _bounded(client.ping, self._redis_limiter)
        if isinstance(result, BaseException):
            checks["redis"] = _result(False, _one_line(result), start)
        else:
            checks["redis"] = _result(True, "PONG", start)


async def _bounded(fn: Callable[[], Any], limiter: trio.CapacityLimiter) -> Any:
    """fn() in a thread, or the exception it raised, or TimeoutError after PROBE_TIMEOUT."""
    with trio.move_on_after(PROBE_TIMEOUT + 0.5):
        try:
            return await trio.to_thread.run_sync(fn, limiter=limiter, abandon_on_cancel=True)
        except Exception as exc:
            return exc
    return TimeoutError(f"no answer within {PROBE_TIMEOUT + 0.5:g} s")


def _result(ok: bool, detail: str, start: float) -> dict[str, Any]:
    return {"ok": ok, "detail": detail, "latency_ms": round((time.perf_counter() - start) * 1000, 2)}


def _skipped() -> dict[str, Any]:
    return {"ok": True, "skipped": True, "detail": "not configured", "latency_ms": None}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def build_admin_app(health: Health, registry: CollectorRegistry,
                    routes: list[BaseRoute] | None = None) -> Starlette:
    async def healthz(request: Request) -> Response:
        code, body = await health.snapshot()
        return JSONResponse(body, status_code=code)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
                *(routes or [])],
        exception_handlers=json_error_handlers(),
    )
