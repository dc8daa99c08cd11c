"""Asking a running service over its admin unix socket: its own health checks (/healthz), and
the operator's requests to its admin API (a thin router: the daemon never parses the body)."""

from __future__ import annotations

import re

import httpx

from oraclewad.errors import InvalidArgument, Unavailable
from oraclewad.operations import HealthView, ServiceCallView, ServiceView
from oraclewad.supervisor.status import State

SERVICE_CALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SERVICE_CALL_PATH = re.compile(r"/[\x21-\x7e]{0,2047}")
SERVICE_CALL_MAX_BYTES = 4 * 1024 * 1024 - 4096  # under gRPC's default message size


def unanswerable(view: ServiceView) -> str | None:
    """Why a service cannot answer now, or None. Unhealthy services answer too: their own
    checks say which part fails, and pairing an instance is how one that cannot send heals."""
    if not view.ready and view.state != State.UNHEALTHY:
        return f"{view.state}{': ' + view.message if view.message else ''}"
    return None


async def probe(view: ServiceView, socket_path: str) -> HealthView:
    if view.state == State.UNAVAILABLE:
        return HealthView(view.tenant, view.service, "unavailable", detail=view.message)
    if view.state in (State.STOPPED, State.STOPPING):
        return HealthView(view.tenant, view.service, "stopped", detail=view.state)
    if (why := unanswerable(view)) is not None:
        return HealthView(view.tenant, view.service, "failing", detail=why)
    # verify=False: plain HTTP on a unix socket; the CA bundle would cost ~60 ms per probe.
    transport = httpx.AsyncHTTPTransport(uds=socket_path, verify=False)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=3.0, verify=False,
                                     trust_env=False) as client:
            response = await client.get("http://child/healthz")
        body = response.json()
    except (httpx.HTTPError, ValueError) as e:
        return HealthView(view.tenant, view.service, "failing",
                          detail=f"health endpoint did not answer: {e.__class__.__name__}")
    return HealthView(view.tenant, view.service, str(body.get("status", "failing")),
                      checks=body.get("checks", {}), detail="")


def check_call(method: str, path: str, body_json: str) -> str:
    """The upper-cased method; InvalidArgument naming the field for a request we do not forward."""
    method = method.upper() or "GET"
    if method not in SERVICE_CALL_METHODS:
        raise InvalidArgument(f"must be one of {', '.join(SERVICE_CALL_METHODS)}", field="method")
    if not SERVICE_CALL_PATH.fullmatch(path):
        raise InvalidArgument("must be an absolute path such as /instances (no spaces, at most 2048 "
                              "characters)", field="path")
    if len(body_json) > SERVICE_CALL_MAX_BYTES:
        raise InvalidArgument(f"is larger than {SERVICE_CALL_MAX_BYTES} bytes", field="body_json")
    return method


async def call(name: str, socket_path: str, service: str, method: str, path: str, body_json: str,
               timeout: float) -> ServiceCallView:
    """Forward one checked request; the answer goes back as the service wrote it."""
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    headers = {"content-type": "application/json"} if body_json else {}
    try:
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client, \
                client.stream(method, f"http://{service}{path}", content=body_json.encode() or None,
                              headers=headers) as response:
            body = await read_capped(response, SERVICE_CALL_MAX_BYTES)
    except TooLarge:
        raise Unavailable(f"{name} answered more than {SERVICE_CALL_MAX_BYTES} bytes") from None
    except httpx.TimeoutException:
        raise Unavailable(f"{name} did not answer {method} {path} within {timeout:g}s") from None
    except httpx.HTTPError as e:
        raise Unavailable(f"{name}'s admin socket did not answer: {e.__class__.__name__}") from None
    return ServiceCallView(response.status_code, body.decode("utf-8", "replace"))


class TooLarge(ValueError):
    pass


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """A streamed body, or TooLarge past `limit` bytes: a child cannot make the daemon hold more."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"answered more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
