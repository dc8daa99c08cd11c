"""grpc handler threads -> the daemon's trio loop, and daemon errors -> gRPC status codes.

grpcio's sync server runs each RPC on a pool thread. Handlers reach the daemon (whose state
lives on the trio thread) only through `Bridge`, which hops with `trio.from_thread` and makes
sure no handler waits forever once the daemon shuts down.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn, ParamSpec, TypeVar

import grpc
import trio

from oraclewad.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OracleError,
    Unavailable,
)

log = logging.getLogger("oraclewad.control")

P = ParamSpec("P")
T = TypeVar("T")

SHUTTING_DOWN = "daemon is shutting down"

_CODES: tuple[tuple[type[OracleError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)


class RpcFailure(Exception):
    """Raised inside handlers to end the call with this code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, message: str) -> RpcFailure:
    """INVALID_ARGUMENT naming the request field, e.g. `id: must start with a letter`."""
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def _invalid_message(exc: InvalidArgument) -> str:
    # Problems about the request itself read "id: ..."; problems in files keep their file name.
    parts = []
    for p in exc.problems:
        if p.source == "request":
            parts.append(f"{p.key}: {p.message}" if p.key else p.message)
        else:
            parts.append(str(p))
    return "; ".join(parts) or str(exc)


def status_for(exc: BaseException, method: str = "") -> tuple[grpc.StatusCode, str]:
    """The gRPC code and operator-facing message for an exception raised while serving."""
    if isinstance(exc, RpcFailure):
        return exc.code, exc.message
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, _invalid_message(exc)
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    if isinstance(exc, trio.RunFinishedError):
        return grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN
    # Tracebacks stay in the daemon's log: they can hold paths and values operators' clients need not see.
    log.error("control: %s failed", method or "call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the daemon's log"


# Set on every error the daemon itself returns, so a client can tell "the daemon said UNAVAILABLE"
# (a tenant's database is down) from "the daemon could not be reached".
ANSWERED_BY = ("oraclewa-answered-by", "oraclewad")


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    context.set_trailing_metadata((ANSWERED_BY,))
    context.abort(code, message)


MAX_FIELD_CHARS = 1000
# Fields that legitimately carry more: a tenant file's worth of TOML, a secret.
LONG_FIELDS = {"extra_toml": 256 * 1024, "evolution_api_key": 4096}


def check_request(message: Any, prefix: str = "") -> None:
    """Every string in a request within its limit (RpcFailure INVALID_ARGUMENT naming the field),
    so an oversized argument never reaches a path, a log line or an error message."""
    for desc, value in message.ListFields():
        name = f"{prefix}{desc.name}"
        if desc.type == desc.TYPE_STRING:
            limit = LONG_FIELDS.get(desc.name, MAX_FIELD_CHARS)
            for item in (value if desc.is_repeated else [value]):
                if len(item) > limit:
                    raise invalid(name, f"is {len(item)} characters long; at most {limit}")
        elif desc.type != desc.TYPE_MESSAGE or desc.message_type.name == "Struct":
            continue
        elif not desc.is_repeated:
            check_request(value, f"{name}.")
        elif not desc.message_type.GetOptions().map_entry:
            for item in value:
                check_request(item, f"{name}.")


def _count(servicer: Any, method: str, code: grpc.StatusCode) -> None:
    # The servicer's `requests` counter (method, code), when the daemon gave it one.
    counter = getattr(servicer, "requests", None)
    if counter is not None:
        counter.labels(method, code.name).inc()


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method (plain or generator) so any exception ends the call with its status,
    and every call is counted by method and code."""
    name = method.__name__

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                check_request(request)
                yield from method(self, request, context)
                _count(self, name, grpc.StatusCode.OK)
                return
            except GeneratorExit:       # the client went away mid-stream
                _count(self, name, grpc.StatusCode.CANCELLED)
                raise
            except Exception as exc:
                code, message = status_for(exc, name)
            _count(self, name, code)
            _abort(context, code, message)

        return stream

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            check_request(request)
            result = method(self, request, context)
            _count(self, name, grpc.StatusCode.OK)
            return result
        except Exception as exc:
            code, message = status_for(exc, name)
        _count(self, name, code)
        # abort() raises; it must run outside the try so it is not mapped a second time.
        _abort(context, code, message)

    return unary


class Bridge:
    """Runs daemon calls on the trio thread on behalf of grpc pool threads."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.closing = threading.Event()
        self._scopes: set[trio.CancelScope] = set()     # touched only on the trio thread

    def _refuse(self) -> NoReturn:
        raise RpcFailure(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def _guarded(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                       kwargs: dict[str, Any], deadline: float) -> T:
        if self.closing.is_set():
            self._refuse()
        with trio.CancelScope() as scope:
            if math.isfinite(deadline):
                scope.deadline = trio.current_time() + deadline
            self._scopes.add(scope)
            try:
                return await fn(*args, **kwargs)
            finally:
                self._scopes.discard(scope)
        if self.closing.is_set():
            self._refuse()
        raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed")

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, deadline: float = math.inf,
            **kwargs: Any) -> T:
        """Await `fn(*args, **kwargs)` on the trio thread; cancelled after `deadline` s or at shutdown."""
        if self.closing.is_set():
            self._refuse()
        try:
            return trio.from_thread.run(self._guarded, fn, args, kwargs, deadline, trio_token=self.token)
        except trio.RunFinishedError:
            self._refuse()

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a synchronous daemon method on the trio thread (daemon state is not thread-safe)."""
        if self.closing.is_set():
            self._refuse()
        try:
            return trio.from_thread.run_sync(functools.partial(fn, *args, **kwargs), trio_token=self.token)
        except trio.RunFinishedError:
            self._refuse()

    def shut(self) -> None:
        """On the trio thread: refuse new calls and cancel the ones in flight."""
        self.closing.set()
        for scope in list(self._scopes):
            scope.cancel()
