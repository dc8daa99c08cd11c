"""A lean HTTP/1.1 server for a service's public port: httptools parses, one trio task per
connection, the hot routes answered by plain handlers, every other request handed to the
service's ASGI app (its Starlette routes, 404s and 405s unchanged).

Why not hypercorn there: it spends about 600 us of CPU per request on this machine (tasks,
nurseries and cancel scopes per request, h11 in pure Python, the ASGI layers), more than the
whole durable webhook path costs otherwise, so a service could not reach the webhook rate it
must take (issue 11: 2,000 requests/s on 2 cores with PostgreSQL and the sender beside it).

Kept from the hypercorn setup it replaces (runtime.py): keep-alive (5 s idle), a 413 for a body
over the route's limit, 400 for a request that does not parse, 431 for headers over 64 KiB,
Expect: 100-continue, answers in request order when a client pipelines. Added, which hypercorn
does not do by default: a 408 for a request that does not arrive whole within REQUEST_TIMEOUT.
On stop: nothing more is accepted (the listening socket may be shared with a swap's new
process: only our copy is closed), a request being received or served is answered with
Connection: close, an idle connection still gets IDLE_GRACE from when it became idle to start a
request (one that has just connected counts as idle), and one whose client hung up ends at once;
what is still open after the graceful timeout is cut. No ASGI lifespan events are sent: an app
that needs them stays on hypercorn.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import httptools
import trio

if TYPE_CHECKING:
    from starlette.types import ASGIApp

log = logging.getLogger("oraclewa.http")

KEEP_ALIVE = 5.0                 # seconds an idle keep-alive connection stays open
# A request must arrive whole within this from its first byte, else 408 and the connection closes:
# the port faces the internet, and a client trickling a request (slowloris) would otherwise hold
# a connection and its task until the next stop. 30 s is ample for a 1 MiB body.
REQUEST_TIMEOUT = 30.0
IDLE_GRACE = 0.5                 # for hypercorn too (runtime.py): see the module docstring
HEADER_LIMIT = 64 * 1024         # request line + headers
ASGI_BODY_LIMIT = 64 * 1024 * 1024   # routes served by the ASGI app get the body whole, up to this
_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]   # names lower-cased, in arrival order
    body: bytes
    too_large: bool                      # the body passed the route's limit (body is then b"")
    client: tuple[str, int] | None
    server: tuple[str, int] | None = None

    def header_map(self) -> dict[str, str]:
        """name -> value (latin-1, the first of repeated names), as Starlette's Headers read them."""
        out: dict[str, str] = {}
        for name, value in self.headers:
            out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        return out


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


# Made once: json.dumps with any option builds a new encoder per call.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def json_answer(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Answer:
    """The bytes Starlette's JSONResponse would send."""
    body = _JSON.encode(doc).encode()
    extra = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    return Answer(status, body, ((b"content-type", b"application/json"), *extra))


@dataclass(frozen=True)
class Route:
    handler: Callable[[Request], Awaitable[Answer]]
    body_limit: int


class Metrics(Protocol):
    """What services/admin.py's HttpMetrics offers: the routes answered here count there too."""

    in_flight: Any

    def record(self, route: str, method: str, status: int, elapsed: float, path: str,
               client: str | None) -> None: ...


class _Parser:
    """httptools' callbacks for one connection: complete requests queue up in `ready`."""

    def __init__(self, server: Http1Server, client: tuple[str, int] | None,
                 local: tuple[str, int] | None) -> None:
        self.server = server
        self.client = client
        self.local = local
        self.parser = httptools.HttpRequestParser(self)
        self.ready: list[tuple[Request, bool]] = []   # (request, keep-alive)
        self.refuse: int | None = None                # answer this status, then close
        self.send_continue = False
        self.in_request = False
        self.began = 0.0                              # trio time of the request's first byte
        self.last = False                             # an upgrade: no request after the ready ones
        self._begin()

    def _begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = ASGI_BODY_LIMIT
        self.too_large = False
        self.route: Route | None = None
        self.length = self.expect = b""

    def on_message_begin(self) -> None:
        self._begin()
        self.in_request = True
        self.began = trio.current_time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > HEADER_LIMIT:
            self.refuse = 431

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"content-length":
            self.length = value
        elif name == b"expect":
            self.expect = value.lower()
        self.head_size += len(name) + len(value) + 4
        if self.head_size > HEADER_LIMIT:
            self.refuse = 431

    def on_headers_complete(self) -> None:
        url = httptools.parse_url(self.url)
        self.path = (url.path or b"/").decode("latin-1")
        self.query = url.query or b""
        self.method = self.parser.get_method().decode("ascii")
        self.route = self.server.routes.get((self.method, self.path))
        if self.route is not None:
            self.limit = self.route.body_limit
        if self.length.isdigit() and int(self.length) > self.limit:
            self.too_large = True
        elif self.expect == b"100-continue":
            self.send_continue = True

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.size += len(body)
        if self.size > self.limit:
            self.too_large = True
            self.chunks.clear()
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        if self.refuse is not None:
            return          # its head was refused: answered with the refusal instead
        self.ready.append((Request(self.method, self.path, self.query, self.headers, b"".join(self.chunks),
                                   False, self.client, self.local), self.parser.should_keep_alive()))

    def early(self) -> Request | None:
        """A request whose body passed its limit: answered (413) before the rest is read."""
        if not (self.too_large and self.in_request):
            return None
        return Request(self.method, self.path, b"", self.headers, b"", True, self.client, self.local)


@dataclass
class Http1Server:
    app: ASGIApp                                   # everything the routes below do not answer
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)   # (method, path) -> route
    metrics: Metrics | None = None
    graceful_timeout: float = 10.0
    keep_alive: float = KEEP_ALIVE
    idle_grace: float = IDLE_GRACE
    request_timeout: float = REQUEST_TIMEOUT
    stopping: bool = False
    _idle: dict[trio.CancelScope, float] = field(default_factory=dict)   # scope -> idle since
    _date: tuple[int, bytes] = (0, b"")

    async def serve(self, sockets: list[socket.socket], shutdown_trigger: Callable[[], Awaitable[Any]],
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(self._accept, listener, connections)
                task_status.started([_bind_name(s) for s in sockets])
                await shutdown_trigger()
                self.stopping = True
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            for scope, since in list(self._idle.items()):
                scope.deadline = min(scope.deadline, since + self.idle_grace)
            connections.cancel_scope.deadline = trio.current_time() + self.graceful_timeout

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRORS:
                    raise
                log.error("accept failed: %s; retrying", exc.strerror)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        parser = _Parser(self, _address(stream.socket.getpeername), _address(stream.socket.getsockname))
        idle_since = trio.current_time()
        try:
            while True:
                early = parser.early()
                if early is not None or parser.refuse is not None:
                    await self._answer_and_close(stream, parser, early)
                    return
                if parser.ready:
                    request, keep = parser.ready.pop(0)
                    answer = await self._dispatch(request)
                    # Decided after serving: a stop that began meanwhile closes the connection.
                    keep = keep and not self.stopping and not (parser.last and not parser.ready)
                    await stream.send_all(self._encode(answer, keep, request.method == "HEAD"))
                    if not keep:
                        return
                    if not parser.ready:
                        idle_since = trio.current_time()
                    continue
                if parser.last:
                    return
                data = await self._receive(stream, parser, idle_since)
                if data is None:
                    parser.refuse = 408     # a request that did not arrive in time: answered, closed
                    continue
                if not data:
                    return          # the client hung up, or idle for too long
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    # No upgrade is served here: the requests before it are, then the connection ends.
                    parser.last = True
                    if not parser.ready:
                        parser.refuse = parser.refuse or 400
                except httptools.HttpParserError:
                    parser.refuse = 400
                if parser.send_continue and not parser.too_large:
                    parser.send_continue = False
                    await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _receive(self, stream: trio.SocketStream, parser: _Parser, idle_since: float) -> bytes | None:
        """The next bytes; b"" when the client hung up or stayed idle too long, None when a request
        on its way did not arrive whole within request_timeout."""
        if parser.in_request:
            with trio.move_on_at(parser.began + self.request_timeout):
                return await stream.receive_some(65536)
            return None
        deadline = idle_since + (self.idle_grace if self.stopping else self.keep_alive)
        with trio.CancelScope(deadline=deadline) as scope:
            self._idle[scope] = idle_since
            try:
                return await stream.receive_some(65536)
            finally:
                del self._idle[scope]
        return b""

    async def _answer_and_close(self, stream: trio.SocketStream, parser: _Parser,
                                early: Request | None) -> None:
        for request, _ in parser.ready:       # pipelined ahead of the bad one: answered first
            await stream.send_all(self._encode(await self._dispatch(request), True, request.method == "HEAD"))
        if early is not None and parser.refuse is None:
            answer = await self._dispatch(early)
        else:
            status = parser.refuse or 413
            answer = json_answer(status, {"error": HTTPStatus(status).phrase, "status": status})
        await stream.send_all(self._encode(answer, False, False))

    async def _dispatch(self, request: Request) -> Answer:
        route = self.routes.get((request.method, request.path))
        if route is None:
            if request.too_large:
                return json_answer(413, {"error": "Request Entity Too Large", "status": 413})
            return await self._asgi(request)
        start = time.perf_counter()
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            answer = await route.handler(request)
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            answer = json_answer(500, {"error": "Internal Server Error", "status": 500})
        finally:
            if self.metrics is not None:
                self.metrics.in_flight.dec()
        if self.metrics is not None:
            self.metrics.record(request.path, request.method, answer.status, time.perf_counter() - start,
                                request.path, request.client[0] if request.client else None)
        return answer

    async def _asgi(self, request: Request) -> Answer:
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": request.method, "scheme": "http", "path": request.path,
                 "raw_path": request.path.encode("latin-1"), "query_string": request.query,
                 "root_path": "", "headers": request.headers, "client": request.client,
                 "server": request.server}
        status, headers, chunks = 500, [], []
        answered, body_sent = trio.Event(), False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers") or [])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    answered.set()

        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            if not answered.is_set():
                return json_answer(500, {"error": "Internal Server Error", "status": 500})
        answered.set()
        return Answer(status, b"".join(chunks), tuple(headers))

    def _encode(self, answer: Answer, keep_alive: bool, head: bool) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        out = [b"HTTP/1.1 %d %s\r\n" % (answer.status, _reason(answer.status)), b"date: ", self._date[1],
               b"\r\n"]
        length = b"%d" % len(answer.body)
        for name, value in answer.headers:
            name = name.lower()
            if name in (b"connection", b"transfer-encoding", b"date"):
                continue
            if name == b"content-length":
                if head:
                    length = value
                continue
            out += (name, b": ", value, b"\r\n")
        if answer.status >= 200 and answer.status not in (204, 304):
            out += (b"content-length: ", length, b"\r\n")
        if not keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        if not head:
            out.append(answer.body)
        return b"".join(out)


_REASONS: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    phrase = _REASONS.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        _REASONS[status] = phrase
    return phrase


def listening_sockets(bind: str) -> list[socket.socket]:
    """The socket for `bind`: "fd://N" (inherited, already listening) or "host:port"."""
    if bind.startswith("fd://"):
        sock = socket.socket(fileno=int(bind[5:]))
    else:
        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    sock.setblocking(False)
    return [sock]


def _bind_name(sock: socket.socket) -> str:
    name = sock.getsockname()
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return f"http://{host}:{name[1]}"


def _address(get: Callable[[], Any]) -> tuple[str, int] | None:
    """(host, port) of a TCP socket's end; None for a unix socket or one already gone."""
    try:
        addr = get()
    except OSError:
        return None
    return (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else None
