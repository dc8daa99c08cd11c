"""The lean HTTP/1.1 server of a public port (services/http1.py): what a client sees, and the
drain of a stopping service, on trio's MockClock frozen (nothing that waits for time can end
unless the test moves the clock)."""

from __future__ import annotations

import json
import socket

import pytest
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from trio.testing import MockClock

from oraclewad.services import http1
from oraclewad.services.web import json_error_handlers


@pytest.fixture
def frozen_clock() -> MockClock:
    return MockClock()


async def _hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello from starlette")


class Hot:
    """The native route: echoes the body's size; `gate` holds it (a request in flight)."""

    def __init__(self) -> None:
        self.gate: trio.Event | None = None
        self.seen: list[http1.Request] = []

    async def __call__(self, request: http1.Request) -> http1.Answer:
        self.seen.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if request.too_large:
            return http1.json_answer(413, {"error": "too large"})
        return http1.json_answer(202, {"size": len(request.body), "x": request.header_map().get("x-a")})


class Served:
    def __init__(self, nursery: trio.Nursery, server: http1.Http1Server) -> None:
        self.server, self.stop, self.done = server, trio.Event(), trio.Event()
        self.nursery = nursery

    async def start(self) -> int:
        sockets = http1.listening_sockets("127.0.0.1:0")
        port = sockets[0].getsockname()[1]

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            await self.server.serve(sockets, self.stop.wait, task_status=task_status)
            self.done.set()

        assert await self.nursery.start(run) == [f"http://127.0.0.1:{port}"]
        return port


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[Served, Hot, int]:
    hot = Hot()
    # The app has the hot route too (as recovery's does): its other methods get the app's 405.
    app = Starlette(routes=[Route("/", _hello), Route("/hot", _hello, methods=["POST"])],
                    exception_handlers=json_error_handlers())
    server = http1.Http1Server(app, {("POST", "/hot"): http1.Route(hot, 100)}, graceful_timeout=10.0)
    s = Served(nursery, server)
    return s, hot, await s.start()


async def answers(stream: trio.SocketStream, count: int = 1) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """`count` whole responses read off `stream`: (status line, headers, body)."""
    buf, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some()
            assert data, f"closed after {len(out)} answers: {buf!r}"
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        if status.startswith(b"HTTP/1.1 100"):
            continue
        size = int(headers.get(b"content-length", b"0"))
        while len(buf) < size:
            buf += await stream.receive_some()
        out.append((status, headers, buf[:size]))
        buf = buf[size:]
    return out


async def closed(stream: trio.SocketStream) -> bool:
    return await stream.receive_some() == b""


def post(body: bytes, path: str = "/hot", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def test_keep_alive_pipelining_and_the_asgi_routes(served) -> None:
    _s, _hot, port = served
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    # Three requests in one write: answered in order on the one connection.
    await stream.send_all(post(b"abc", extra="X-A: 1\r\nx-a: 2\r\n") + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
                          + b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
    (s1, h1, b1), (s2, _, b2), (s3, _h3, b3) = await answers(stream, 3)
    assert (s1, json.loads(b1)) == (b"HTTP/1.1 202 Accepted", {"size": 3, "x": "1"})
    assert h1[b"content-type"] == b"application/json" and b"connection" not in h1
    assert (s2, b2) == (b"HTTP/1.1 200 OK", b"hello from starlette")
    assert s3 == b"HTTP/1.1 404 Not Found" and json.loads(b3)["status"] == 404
    # The hot route answers only its method: the app's 405 for the others.
    await stream.send_all(b"GET /hot HTTP/1.1\r\nHost: t\r\n\r\n")
    ((status, _, _),) = await answers(stream)
    assert status == b"HTTP/1.1 405 Method Not Allowed"
    # A chunked body, and Expect: 100-continue (answered 100 before the body is sent).
    await stream.send_all(b"POST /hot HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                          b"Expect: 100-continue\r\n\r\n")
    assert (await stream.receive_some()).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    await stream.send_all(b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")
    ((status, _, body),) = await answers(stream)
    assert json.loads(body)["size"] == 6
    await stream.aclose()


async def test_a_body_over_the_limit_is_413_before_it_is_read_and_garbage_is_400(served) -> None:
    _s, hot, port = served
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /hot HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
    ((status, headers, _),) = await answers(stream)
    assert status.startswith(b"HTTP/1.1 413") and headers[b"connection"] == b"close"
    assert hot.seen[-1].too_large and hot.seen[-1].body == b""
    assert await closed(stream)
    # Chunked past the limit: the same, once the limit is passed.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /hot HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + b"64\r\n" + b"y" * 100 + b"\r\n1\r\nz\r\n")
    ((status, _, _),) = await answers(stream)
    assert status.startswith(b"HTTP/1.1 413")
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\r\nHost t\r\n\r\n",
                    b"POST /hot HTTP/1.1\r\nContent-Length: -1\r\n\r\n"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(garbage)
        ((status, _, _),) = await answers(stream)
        assert status.startswith(b"HTTP/1.1 400"), garbage
        assert await closed(stream)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
    ((status, _, _),) = await answers(stream)
    assert status.startswith(b"HTTP/1.1 431"), status


async def test_a_stop_answers_what_is_in_flight_then_gives_idle_clients_the_grace(
        frozen_clock: MockClock, served) -> None:
    s, hot, port = served
    hot.gate = trio.Event()
    busy = await trio.open_tcp_stream("127.0.0.1", port)
    await busy.send_all(post(b"in flight"))
    idle = await trio.open_tcp_stream("127.0.0.1", port)        # connected, no request yet
    gone = await trio.open_tcp_stream("127.0.0.1", port)
    await gone.send_all(post(b"x"))
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    s.stop.set()
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    with pytest.raises(OSError):     # nothing more is accepted
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    await gone.aclose()              # a client hanging up does not hold the stop
    # Within its grace the idle client still sends a request: served, then closed.
    frozen_clock.jump(http1.IDLE_GRACE / 2)
    hot.gate.set()
    await idle.send_all(post(b"late"))
    ((status, headers, _),) = await answers(idle)
    assert status.startswith(b"HTTP/1.1 202") and headers[b"connection"] == b"close"
    ((status, headers, _),) = await answers(busy)
    assert status.startswith(b"HTTP/1.1 202") and headers[b"connection"] == b"close"
    assert await closed(idle) and await closed(busy)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert s.done.is_set()
    assert trio.current_time() == http1.IDLE_GRACE / 2


async def test_an_idle_client_that_sends_nothing_is_closed_after_the_grace(frozen_clock: MockClock,
                                                                          served) -> None:
    s, _hot, port = served
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    await idle.send_all(post(b"first"))
    await answers(idle)              # keep-alive: idle from its answer on
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    s.stop.set()
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert not s.done.is_set()
    frozen_clock.jump(http1.IDLE_GRACE)
    assert await closed(idle)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert s.done.is_set()


async def test_a_request_trickled_past_the_request_timeout_is_408_and_closed(frozen_clock: MockClock,
                                                                            served) -> None:
    """The port faces the internet: a client that starts a request and sends the rest slowly
    (slowloris) holds its connection only for REQUEST_TIMEOUT, not until the next stop."""
    _s, hot, port = served
    slow = await trio.open_tcp_stream("127.0.0.1", port)
    await slow.send_all(b"POST /hot HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\nabc")
    for _ in range(5):       # a byte now and then keeps it busy, never complete
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        frozen_clock.jump(http1.REQUEST_TIMEOUT / 6)
        await slow.send_all(b"d")
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    frozen_clock.jump(http1.REQUEST_TIMEOUT / 6 + 0.01)
    ((status, headers, _),) = await answers(slow)
    assert status == b"HTTP/1.1 408 Request Timeout" and headers[b"connection"] == b"close"
    assert await closed(slow)
    assert hot.seen == []            # the handler never saw the incomplete request
    # A request that arrives whole in time, byte by byte, is served as usual.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    for byte in post(b"ok"):
        await stream.send_all(bytes([byte]))
    ((status, _, _),) = await answers(stream)
    assert status.startswith(b"HTTP/1.1 202")
    await stream.aclose()
