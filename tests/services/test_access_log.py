"""The access log under a flood (issue 7 item 4): each line capped, repeated lines rate-limited
and counted, so unauthenticated clients cannot rotate the useful history out."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from oraclewad.services.admin import MAX_LOGGED_PATH, AccessLogLimiter, HttpMetrics


def test_the_limiter_passes_a_burst_then_a_rate_and_counts_the_rest() -> None:
    now = [0.0]
    limiter = AccessLogLimiter(rate=10, burst=5, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(8)] == [0, 0, 0, 0, 0, None, None, None]
    now[0] += 0.1                       # one token back
    assert limiter.allow() == 3         # the first line after says how many were held back
    assert limiter.allow() is None
    assert limiter.suppressed_total == 4


@pytest.mark.parametrize("path_len", [10, 20_000])
def test_a_flood_of_long_paths_writes_a_bounded_log(caplog, path_len: int) -> None:
    async def hello(request):  # type: ignore[no-untyped-def]
        return PlainTextResponse("hi")

    registry = CollectorRegistry()
    app = HttpMetrics(Starlette(routes=[Route("/hello", hello)]), registry)
    app.access_limit = AccessLogLimiter(clock=lambda: 0.0)   # the flood arrives at one instant

    async def flood() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(400):
                await client.get("/" + "a" * path_len)
            await client.get("/hello")

    with caplog.at_level(logging.INFO, logger="oraclewad.services.http"):
        trio.run(flood)
    records = [r for r in caplog.records if r.name == "oraclewad.services.http"]
    assert len(records) == 200                          # the burst; the clock stands still
    assert all(len(r.path) <= MAX_LOGGED_PATH + 30 for r in records)
    suppressed = registry.get_sample_value("oraclewa_http_access_log_suppressed_total")
    assert suppressed is not None and suppressed + len(records) == 401
