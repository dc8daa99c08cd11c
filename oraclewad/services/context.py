"""What a service's `build_app(ctx)` gets: `ServiceContext`.

Its own module so the runtime (which builds it), the admin app, the instance states and the
services' apps can all name it without importing one another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from oraclewad.services.logs import channel_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from psycopg_pool import ConnectionPool
    from redis import Redis
    from starlette.routing import BaseRoute

    from oraclewad.services.evolution import EvolutionClient
    from oraclewad.services.instances import InstanceStates

T = TypeVar("T")
PROCESS_START = time.monotonic()


@dataclass(eq=False)
class ServiceContext:
    """What a service's `build_app(ctx)` gets: identity, config, dependencies, metrics, logs."""

    tenant: str
    service: str
    release: str
    display_name: str
    config: Mapping[str, Any]  # the whole validated JSON (webhook_secret, evolution, antiban, templates...)
    pg: ConnectionPool | None
    redis: Redis | None
    redis_prefix: str
    metrics: CollectorRegistry
    limiter: trio.CapacityLimiter  # Postgres threads; sized to the pool so no thread waits on it
    started_at: float = field(default_factory=lambda: PROCESS_START)  # time.monotonic(), for uptime
    # With an [evolution] url: the client, and this service's own instances (can_send, events, health).
    evolution: EvolutionClient | None = None
    instances: InstanceStates | None = None
    # What the admin socket serves besides /healthz and /metrics (the daemon's ServiceCall reaches
    # these), and further /healthz checks: name -> () -> {"ok": bool, "detail": str, ...}.
    admin_routes: list[BaseRoute] = field(default_factory=list)
    health_checks: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    _tasks: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = field(default_factory=list)

    def log(self, channel: str) -> logging.Logger:
        """Logger for a channel ("webhook", "broadcast", "antiban"...): the daemon files each apart."""
        return channel_logger(channel)

    async def db(self, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        """fn(conn, *args) in a worker thread with a pooled connection; commits if fn returns,
        rolls back if it raises. Not abandoned on cancel: a transaction finishes or fails cleanly.
        `wait`: seconds for a free connection before PoolTimeout (None: the pool's own timeout)."""
        pool = self.pg
        if pool is None:
            raise RuntimeError(f"{self.service} needs postgres in its config")

        def call() -> T:
            with pool.connection(timeout=wait) as conn:
                return fn(conn, *args)

        return await trio.to_thread.run_sync(call, limiter=self.limiter)

    async def kv(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(redis_client, *args) in a worker thread (batch with a pipeline inside fn)."""
        client = self.redis
        if client is None:
            raise RuntimeError(f"{self.service}: redis is not configured")
        return await trio.to_thread.run_sync(partial(fn, client, *args))

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Register a background task (e.g. a sender loop) from build_app. It starts once the
        process is READY and is cancelled after in-flight requests drained. If it raises, the
        process exits with a traceback and the supervisor restarts it."""
        self._tasks.append((fn, args))

    def start_background(self, nursery: trio.Nursery) -> None:
        """The runtime's half of start_soon: run the registered tasks in `nursery` (once READY)."""
        for fn, args in self._tasks:
            nursery.start_soon(fn, *args)
