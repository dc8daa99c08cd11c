"""The broadcast service's public HTTP app. Until the broadcast issue lands it only describes itself."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.applications import Starlette

from oraclewad.services.antiban import Engine, Rules
from oraclewad.services.antiban import service as antiban_service
from oraclewad.services.instances import events_route
from oraclewad.services.runtime import ServiceContext
from oraclewad.services.suppression import SuppressionList, opt_out_handler
from oraclewad.services.web import describing_app

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(ctx: ServiceContext) -> Starlette:
    # Its instances' connection.update events keep their state (and /healthz) true already; an
    # opt-out received on them goes to the tenant's suppression list (shared with recovery).
    suppression = SuppressionList((ctx.config.get("shared") or {}).get("dsn"), ctx.service)
    on_event = opt_out_handler(suppression)
    engine = antiban_engine(ctx)
    if engine is not None:
        on_event = antiban_service.upsert_handler(engine, ctx.db, time.time, then=on_event)
        antiban_service.attach(ctx, engine, ctx.db, time.time)
    routes = [events_route(ctx, on_event)] if ctx.instances is not None else []
    return describing_app(ctx, "the campaign API (CSV import, campaigns, pacing) arrives with the "
                               "broadcast issue", routes)


def antiban_engine(ctx: ServiceContext) -> Engine | None:
    """Broadcast's anti-ban engine (the whole Conti Chips strategy), when it has instances and a database."""
    if ctx.instances is None or ctx.pg is None:
        return None
    rules = Rules.for_service("broadcast", ctx.config.get("antiban"))
    return Engine(service="broadcast", names=list(ctx.instances.states), rules=rules, instances=ctx.instances,
                  log=ctx.log("antiban"), registry=ctx.metrics)
