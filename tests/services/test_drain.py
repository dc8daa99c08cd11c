"""The drain of a stopping service on trio's MockClock, frozen: nothing that waits for time can end."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from trio.testing import MockClock

from oraclewad.services import runtime  # patches hypercorn's idle handling


@pytest.fixture
def frozen_clock() -> MockClock:
    return MockClock()      # rate 0, no autojump: virtual time moves only if a test jumps it


async def _hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def test_a_stop_does_not_wait_the_idle_grace_for_clients_that_hung_up(frozen_clock: MockClock) -> None:
    # Frozen virtual time: the stop ends only if no connection waits for its IDLE_GRACE (a swap's
    # old process used to wait it out for every webhook sender that had just closed its socket).
    stop, done = trio.Event(), trio.Event()
    config = runtime._hypercorn_config("127.0.0.1:0", graceful_timeout=10.0)
    app = Starlette(routes=[Route("/", _hello)])

    async def server(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, shutdown_trigger=stop.wait, mode="asgi", task_status=task_status)
        done.set()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(server)
        port = int(binds[0].rpartition(":")[2])
        streams = []
        for _ in range(3):      # keep-alive clients, answered
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += await stream.receive_some()
            assert answer.startswith(b"HTTP/1.1 200")
            streams.append(stream)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        stop.set()              # then they hang up, as a webhook sender does after its answer
        for stream in streams:
            await stream.aclose()
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert done.is_set(), "the stop waits for connections whose clients are gone"
        assert trio.current_time() == 0.0
        nursery.cancel_scope.cancel()
