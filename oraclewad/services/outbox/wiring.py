"""What a sending service wires around its outbox, the same for recovery and broadcast: Evolution's
events route, the anti-ban engine's routes and observe loop, the sender's task, and closing the
tenant's suppression list at exit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad.services.suppression import SuppressionList


def attach(ctx: Any, *, on_event: Callable[[dict[str, Any]], Awaitable[None]], engine: Any, sender: Any,
           suppression: SuppressionList, db: Callable[..., Awaitable[Any]],
           clock: Callable[[], float]) -> Route:
    """Start what the outbox needs on `ctx`; returns the POST /webhooks/evolution route."""
    if engine is not None:
        from oraclewad.services.antiban import service as antiban_service

        # GET /instances shows each instance's anti-ban state; POST /instances/{name}/attest. A
        # sender observes the engine in its own sweep, so the observe loop runs only without one.
        antiban_service.attach(ctx, engine, db, clock, observe=sender is None)
    if sender is not None:
        ctx.start_soon(sender.run)
    ctx.start_soon(_close_at_exit, suppression)
    if getattr(ctx, "instances", None) is None:
        return Route("/webhooks/evolution", _unauthenticated, methods=["POST"])
    from oraclewad.services.instances import events_route

    return events_route(ctx, on_event)


async def _unauthenticated(request: Request) -> Response:
    return JSONResponse({"error": "unauthorized", "detail": "this service has no Evolution webhook key "
                         "([evolution] url in the tenant file)"}, status_code=401)


async def _close_at_exit(suppression: SuppressionList) -> None:
    try:
        await trio.sleep_forever()
    finally:
        await trio.to_thread.run_sync(suppression.close)
