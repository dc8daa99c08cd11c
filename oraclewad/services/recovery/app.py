"""The recovery service's public HTTP app. Until the recovery issue lands it only describes itself."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from oraclewad.services.runtime import ServiceContext
from oraclewad.services.web import json_error_handlers

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(ctx: ServiceContext) -> Starlette:
    endpoints = [{"method": "GET", "path": "/", "description": "this description"}]

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({
            "service": ctx.service, "tenant": ctx.tenant, "display_name": ctx.display_name,
            "release": ctx.release, "status": "ready", "endpoints": endpoints,
            "note": "order webhooks (order expired, order paid) arrive with the recovery issue",
        })

    return Starlette(routes=[Route("/", index, methods=["GET"])], exception_handlers=json_error_handlers())
