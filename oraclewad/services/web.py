"""Small Starlette helpers shared by the services' apps: errors answer JSON, never HTML."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from oraclewad.services.context import ServiceContext


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {"error": exc.detail, "status": exc.status_code, "path": request.url.path}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # The traceback is logged by the server; the client learns nothing about internals.
    return JSONResponse({"error": "Internal Server Error", "status": 500}, status_code=500)


def json_error_handlers() -> Mapping[Any, Any]:
    return {HTTPException: _http_error, 500: _server_error}


def describing_app(ctx: ServiceContext, note: str, routes: list[Route] | None = None) -> Starlette:
    """An app that only describes itself (plus `routes`): what a service serves before its
    business logic lands."""
    endpoints = [{"method": "GET", "path": "/", "description": "this description"}]
    endpoints += [{"method": m, "path": r.path} for r in routes or [] for m in sorted(r.methods or ())
                  if m != "HEAD"]

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({
            "service": ctx.service, "tenant": ctx.tenant, "display_name": ctx.display_name,
            "release": ctx.release, "status": "ready", "endpoints": endpoints, "note": note,
        })

    return Starlette(routes=[Route("/", index, methods=["GET"]), *(routes or [])],
                     exception_handlers=json_error_handlers())
