"""The broadcast service's public HTTP app. Until the broadcast issue lands it only describes itself."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from oraclewad.services.instances import events_route
from oraclewad.services.runtime import ServiceContext
from oraclewad.services.suppression import SuppressionList, opt_out_handler
from oraclewad.services.web import describing_app

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(ctx: ServiceContext) -> Starlette:
    # Its instances' connection.update events keep their state (and /healthz) true already; an
    # opt-out received on them goes to the tenant's suppression list (shared with recovery).
    suppression = SuppressionList((ctx.config.get("shared") or {}).get("dsn"), ctx.service)
    routes = [events_route(ctx, opt_out_handler(suppression))] if ctx.instances is not None else []
    return describing_app(ctx, "the campaign API (CSV import, campaigns, pacing) arrives with the "
                               "broadcast issue", routes)
