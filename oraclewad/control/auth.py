"""Bearer-token auth for the TCP listener (the unix socket's auth is its file permissions)."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from oraclewad.errors import FailedPrecondition

log = logging.getLogger("oraclewad.control")

# Health carries no tenant data, and load balancers and probes check it without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def load_or_create_token(path: Path) -> str:
    """The control token; created (0600, in a 0700 directory) with 32 random bytes if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        log.info("control: created the TCP token file %s (mode 0600)", path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("control: token file %s has mode %o; it should be 0600 (chmod 600 %s)", path, mode, path)
    token = path.read_text().strip()
    if len(token) < 16:
        raise FailedPrecondition(f"control token file {path} holds no usable token (under 16 characters): "
                                 "delete it and restart to generate one")
    return token


def _reject(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # The rejecting handler must have the same shape as the method it stands in for.
    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(deny)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    return grpc.unary_stream_rpc_method_handler(deny)


class TokenAuth(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call except health checks."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode("latin-1")
                break
        # compare_digest: the time taken must not tell how much of a guess was right.
        if given and hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        message = ("missing `authorization: Bearer <token>` metadata (oraclectl: --token-file)" if not given
                   else "wrong token: use the one in the daemon's control.token file")
        return _reject(continuation(handler_call_details), message)
