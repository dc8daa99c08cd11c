"""What a service wires around its engine: the observe loop (standby starts, idle drop-backs,
metrics; a service with a sender observes in the sender's sweep instead), the anti-ban columns of
GET /instances, POST /instances/{name}/attest (oraclectl instances attest, through the daemon).
Manual messages reach the engine from services/outbox's EvolutionEvents (note_upsert)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import psycopg
import trio
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad.services.antiban.engine import Engine

if TYPE_CHECKING:
    from oraclewad.services.context import ServiceContext

OBSERVE_EVERY = 10.0
NETWORKS = ("4g", "proxy")
Db = Callable[..., Awaitable[Any]]
log = logging.getLogger("oraclewad.services.antiban.service")


def attach(ctx: ServiceContext, engine: Engine, db: Db, clock: Callable[[], float], *,
           observe: bool = True) -> None:
    """observe: run the observe loop here (False when the service's sender observes in its sweep)."""
    async def details() -> dict[str, dict[str, Any]]:
        try:
            rows = await db(engine.explain, clock())
        except (psycopg.Error, PoolTimeout) as exc:
            return {n: {"why_not": f"anti-ban state unavailable: {type(exc).__name__}"} for n in engine.names}
        return {row["instance"]: row for row in rows}

    if ctx.instances is not None:
        ctx.instances.details = details
    ctx.admin_routes.append(Route("/instances/{name}/attest", _attest_route(engine, db, clock),
                                  methods=["POST"]))
    if observe:
        ctx.start_soon(_observe_forever, engine, db, clock)


async def _observe_forever(engine: Engine, db: Db, clock: Callable[[], float]) -> None:
    while True:
        try:
            await db(engine.observe, clock())
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("anti-ban observe: database unavailable", extra={"error": type(exc).__name__})
        await trio.sleep(OBSERVE_EVERY)


def parse_attestation(body: Any) -> tuple[dict[str, Any] | None, str]:
    """(fields, "") or (None, the problem naming the field and the fix)."""
    if not isinstance(body, dict) or not body:
        return None, ('body: a JSON object with any of network ("4g" or "proxy"), groups (joined), '
                      'recharge ("YYYY-MM-DD")')
    unknown = sorted(set(body) - {"network", "groups", "recharge"})
    if unknown:
        return None, f"{unknown[0]}: unknown field; use network, groups, recharge"
    network, groups, recharge = body.get("network"), body.get("groups"), body.get("recharge")
    if network is not None and network not in NETWORKS:
        return None, 'network: "4g" or "proxy" (how the phone reaches the internet)'
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int)
                               or not 0 <= groups <= 1000):
        return None, "groups: the number of WhatsApp groups the number joined, e.g. 3"
    day = None
    if recharge is not None:
        try:
            day = date.fromisoformat(recharge) if isinstance(recharge, str) else None
        except ValueError:
            day = None
        if day is None:
            return None, "recharge: the date of the last monthly recharge, YYYY-MM-DD"
    return {"network": network, "groups": groups, "recharge": day}, ""


def _attest_route(engine: Engine, db: Db,
                  clock: Callable[[], float]) -> Callable[[Request], Awaitable[Response]]:
    async def attest(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in engine.names:
            return JSONResponse({"error": f"{name!r} is not one of the {engine.service} instances"},
                                status_code=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        fields, problem = parse_attestation(body)
        if fields is None:
            return JSONResponse({"error": problem}, status_code=400)
        now = clock()
        if fields["recharge"] is not None and fields["recharge"] > engine.cal.day(now):
            return JSONResponse({"error": "recharge: a date in the future; use the day it was paid"},
                                status_code=400)
        try:
            saved = await db(lambda conn: engine.attest(conn, name, now=now, **fields))
        except (psycopg.Error, PoolTimeout):
            return JSONResponse({"error": "the database is unavailable; retry"}, status_code=503)
        return JSONResponse({"service": engine.service, **saved})

    return attest
