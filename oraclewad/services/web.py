"""Small Starlette helpers shared by the services' apps: errors answer JSON, never HTML."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {"error": exc.detail, "status": exc.status_code, "path": request.url.path}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # The traceback is logged by the server; the client learns nothing about internals.
    return JSONResponse({"error": "Internal Server Error", "status": 500}, status_code=500)


def json_error_handlers() -> Mapping[Any, Any]:
    return {HTTPException: _http_error, 500: _server_error}
