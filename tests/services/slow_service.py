"""A test-only service on the real runtime: POST /echo answers only once the whole body arrived, so a
test controls exactly when a request is in flight (no sleeps, no test hooks in the product)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from oraclewad.services.runtime import ServiceContext, run_service


def build_app(ctx: ServiceContext) -> Starlette:
    log = ctx.log("test")

    async def echo(request: Request) -> PlainTextResponse:
        log.info("echo started")
        body = await request.body()
        return PlainTextResponse(body)

    return Starlette(routes=[Route("/echo", echo, methods=["POST"])])


if __name__ == "__main__":
    run_service("recovery", build_app)
