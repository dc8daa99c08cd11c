"""A service's own view of its Evolution instances: which can send now, and why the others cannot.

Fed by three sources: a poll of `connectionState`, the `connection.update` events Evolution posts
to the service, and the outcome of each send. The sender asks `can_send`; `/healthz` reports every
instance and fails when none can send; the admin socket lists them and pairs them
(`oraclectl instances`, via the daemon's ServiceCall).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Gauge
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad.services.evolution import (
    DEFAULT_EVENTS,
    EvolutionClient,
    EvolutionError,
    FailureKind,
    verify_webhook,
    webhook_headers,
)

if TYPE_CHECKING:
    from oraclewad.services.context import ServiceContext

POLL_INTERVAL_S = 30.0
# connection.update close codes after which Evolution does not reconnect by itself.
OUT_OF_ROTATION = {401: "logged out: pair it again (oraclectl instances connect)",
                   402: "temporarily banned", 403: "banned (forbidden)", 406: "permanently banned"}
MAX_EVENT_BYTES = 1 << 20

log = logging.getLogger("oraclewad.services.instances")


@dataclass
class InstanceState:
    name: str
    state: str = "unknown"        # open | connecting | close | refused | missing | unauthorized | unreachable
    status_reason: int | None = None
    in_rotation: bool = True      # False after a logout/ban until the instance is open again
    detail: str = "not checked yet"
    changed_at: float | None = None
    checked_at: float | None = None

    @property
    def can_send(self) -> bool:
        return self.state == "open" and self.in_rotation


class InstanceStates:
    def __init__(self, names: list[str] | tuple[str, ...], client: EvolutionClient | None, *,
                 poll_interval: float = POLL_INTERVAL_S, clock: Callable[[], float] = time.time,
                 registry: CollectorRegistry | None = None) -> None:
        self.client = client
        self.poll_interval = poll_interval
        self.clock = clock
        self.states = {name: InstanceState(name) for name in names}
        # The anti-ban engine's view (stage, cap, next slot, why not), merged into GET /instances.
        self.details: Callable[[], Awaitable[dict[str, dict[str, Any]]]] | None = None
        self._can_send: Gauge | None = None
        if registry is not None:
            # Instance names come from the tenant file (bounded), never from outside.
            self._can_send = Gauge("oraclewa_instance_can_send",
                                   "1 when the instance is open and in rotation (this service's view)",
                                   ["instance"], registry=registry)
            for name in self.states:
                self._can_send.labels(name).set(0)

    def __contains__(self, name: object) -> bool:
        return name in self.states

    def can_send(self, name: str) -> bool:
        state = self.states.get(name)
        return state is not None and state.can_send

    def sendable(self) -> list[str]:
        return [name for name, state in self.states.items() if state.can_send]

    def _set(self, name: str, state: str, detail: str, *, reason: int | None = None,
             in_rotation: bool | None = None) -> None:
        current = self.states[name]
        if (current.state, current.status_reason, current.detail) != (state, reason, detail):
            log.info("instance state", extra={"instance": name, "state": state, "status_reason": reason,
                                              "detail": detail, "previous": current.state})
            current.changed_at = self.clock()
        current.state, current.status_reason, current.detail = state, reason, detail
        if in_rotation is not None:
            current.in_rotation = in_rotation
        if self._can_send is not None:
            self._can_send.labels(name).set(1 if current.can_send else 0)

    def apply_connection_update(self, data: dict[str, Any]) -> None:
        """A `connection.update` event's data (`instance`, `state`, `statusReason`)."""
        name, state = data.get("instance"), data.get("state")
        if name not in self.states or not isinstance(state, str):
            return
        reason = data.get("statusReason")
        reason = reason if isinstance(reason, int) and not isinstance(reason, bool) else None
        if state == "open":
            self._set(name, "open", "connected", reason=reason, in_rotation=True)
        elif state == "close" and reason in OUT_OF_ROTATION:
            self._set(name, "close", f"out of rotation: {OUT_OF_ROTATION[reason]} ({reason})",
                      reason=reason, in_rotation=False)
        elif state == "refused":
            self._set(name, "refused", "QR code limit reached: pair it again", reason=reason)
        elif state == "connecting":
            self._set(name, "connecting", "reconnecting: paused until open", reason=reason)
        else:
            self._set(name, state, f"{state} ({reason})" if reason else state, reason=reason)

    def note_send(self, name: str, error: EvolutionError | None) -> None:
        """What a send through `name` taught us: success proves it open; Connection Closed pauses it."""
        if name not in self.states:
            return
        current = self.states[name]
        if error is None:
            if current.state != "open" and current.in_rotation:
                self._set(name, "open", "connected (a send went through)")
        elif error.kind == FailureKind.CONNECTION_CLOSED:
            self._set(name, "close", "paused: a send answered Connection Closed",
                      reason=current.status_reason)
        elif error.kind == FailureKind.UNAUTHORIZED:
            self._set(name, "unauthorized", "Evolution refused the API key: fix evolution.api_key_file")
        elif error.kind == FailureKind.REJECTED and error.status == 404:
            self._set(name, "missing", "not on the Evolution server: oraclectl instances connect")

    async def refresh(self, name: str) -> InstanceState:
        """Ask Evolution for one instance's state (connectionState carries no reason code, so a
        ban noted from an event stays noted until the instance is open again)."""
        current = self.states[name]
        if self.client is None:
            self._set(name, "unreachable", "no [evolution] url configured")
            return current
        try:
            state = await self.client.connection_state(name)
        except EvolutionError as e:
            if e.kind == FailureKind.REJECTED and e.status == 404:
                self._set(name, "missing", "not on the Evolution server: oraclectl instances connect")
            elif e.kind == FailureKind.UNAUTHORIZED:
                self._set(name, "unauthorized", "Evolution refused the API key: fix evolution.api_key_file")
            else:
                self._set(name, "unreachable", f"Evolution did not answer: {e}")
        else:
            if state == "open":
                self._set(name, "open", "connected", reason=None, in_rotation=True)
            elif state == "close" and not current.in_rotation:
                self._set(name, "close", current.detail, reason=current.status_reason)
            elif state == "close":
                self._set(name, "close", "not connected: oraclectl instances connect")
            elif state != current.state:
                self._set(name, state, {"connecting": "reconnecting: paused until open"}.get(state, state))
        current.checked_at = self.clock()
        return current

    async def refresh_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for name in self.states:
                nursery.start_soon(self.refresh, name)

    async def poll_forever(self) -> None:
        while True:
            await self.refresh_all()
            await trio.sleep(self.poll_interval)

    def snapshot(self) -> list[dict[str, Any]]:
        return [{**asdict(s), "can_send": s.can_send} for s in self.states.values()]

    def health(self) -> dict[str, Any]:
        """The `instances` check of /healthz: fails when no instance can send."""
        ready = self.sendable()
        rows = {s.name: {"state": s.state, "can_send": s.can_send, "detail": s.detail,
                         "status_reason": s.status_reason} for s in self.states.values()}
        if not self.states:
            detail = "no instances listed: add them to this service's `instances` in the tenant file"
        elif ready:
            detail = f"{len(ready)} of {len(self.states)} can send"
        else:
            detail = "no instance can send: " + "; ".join(f"{s.name} {s.state} ({s.detail})"
                                                         for s in self.states.values())
        return {"ok": bool(ready), "detail": detail, "instances": rows}


# ---- HTTP: the admin API (via the daemon's ServiceCall) and the events endpoint -----------------

def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


def admin_routes(ctx: ServiceContext) -> list[Route]:
    """GET /instances, GET /instances/{name}[?refresh=1], POST /instances/{name}/connect."""
    states: InstanceStates = ctx.instances  # type: ignore[assignment]
    evolution_cfg = ctx.config.get("evolution") or {}

    def owned(request: Request) -> str:
        name = request.path_params["name"]
        if name not in states:
            listed = ", ".join(states.states) or "none"
            raise _NotOurs(f"{name!r} is not one of the {ctx.service} instances ({listed}); list it "
                           f"in [{ctx.service}] instances in the tenant file and reload")
        return name

    async def details() -> dict[str, dict[str, Any]]:
        return await states.details() if states.details is not None else {}

    async def list_all(request: Request) -> Response:
        extra = await details()
        return JSONResponse({"service": ctx.service, "instances": [
            {**row, **({"antiban": extra[row["name"]]} if row["name"] in extra else {})}
            for row in states.snapshot()]})

    async def one(request: Request) -> Response:
        try:
            name = owned(request)
        except _NotOurs as e:
            return _error(404, str(e))
        if request.query_params.get("refresh"):
            await states.refresh(name)
        extra = await details()
        return JSONResponse({"service": ctx.service, **asdict(states.states[name]),
                             "can_send": states.can_send(name),
                             **({"antiban": extra[name]} if name in extra else {})})

    async def connect(request: Request) -> Response:
        try:
            name = owned(request)
        except _NotOurs as e:
            return _error(404, str(e))
        body = await _optional_json(request)
        if body is None:
            return _error(400, 'body: must be a JSON object such as {"number": "5511999999999"} or empty')
        number = body.get("number")
        if number is not None and not (isinstance(number, str) and number.isdigit()
                                       and 8 <= len(number) <= 15):
            return _error(400, "number: digits only with the country code, e.g. 5511999999999")
        url, key = evolution_cfg.get("webhook_url"), evolution_cfg.get("webhook_jwt_key")
        if ctx.evolution is None or not url or not key:
            return _error(409, "this service has no [evolution] url or webhook key: set [evolution] url "
                               "in the tenant file and reload")
        try:
            result = await pair(ctx.evolution, name, url, key, number)
        except EvolutionError as e:
            return _error(502, f"Evolution: {e}", kind=str(e.kind))
        await states.refresh(name)
        return JSONResponse({"service": ctx.service, "instance": name, **result})

    return [Route("/instances", list_all, methods=["GET"]),
            Route("/instances/{name}", one, methods=["GET"]),
            Route("/instances/{name}/connect", connect, methods=["POST"])]


async def pair(client: EvolutionClient, name: str, webhook_url: str, jwt_key: str,
               number: str | None) -> dict[str, Any]:
    """Create the instance when missing, point its webhook at us (signed with jwt_key), start pairing."""
    created = False
    try:
        await client.fetch_instances(name)
    except EvolutionError as e:
        if not (e.kind == FailureKind.REJECTED and e.status == 404):
            raise
        await client.create_instance(name, webhook_url=webhook_url, webhook_headers=webhook_headers(jwt_key),
                                     events=list(DEFAULT_EVENTS))
        created = True
    await client.set_webhook(name, webhook_url, webhook_headers(jwt_key), list(DEFAULT_EVENTS))
    info = await client.connect(name, number=number)
    return {"created": created, "webhook_url": webhook_url, "state": info.state, "code": info.code,
            "pairing_code": info.pairing_code}


class _NotOurs(Exception):
    pass


async def _optional_json(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


def events_route(ctx: ServiceContext, on_event: EventHandler | None = None) -> Route:
    """POST /webhooks/evolution: Evolution's events for this service's instances.

    401 without a valid JWT (Evolution does not retry a 401); events for an instance the service
    does not own are acknowledged and ignored; `connection.update` feeds ctx.instances, then
    every event goes to on_event.
    """
    key = (ctx.config.get("evolution") or {}).get("webhook_jwt_key") or ""

    async def receive(request: Request) -> Response:
        if not verify_webhook(request.headers.get("authorization"), key):
            return _error(401, "a valid Evolution webhook token (Authorization: Bearer <JWT>) is required")
        raw = await request.body()
        if len(raw) > MAX_EVENT_BYTES:
            return _error(413, "event larger than 1 MiB")
        try:
            event = json.loads(raw)
        except ValueError:
            return _error(400, "body: not JSON")
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return _error(400, 'body: an Evolution event {"event", "instance", "data"} is expected')
        states = ctx.instances
        if states is None or event.get("instance") not in states:
            return JSONResponse({"ignored": "not one of this service's instances"})
        if event.get("event") == "connection.update":
            states.apply_connection_update({**event["data"], "instance": event["instance"]})
        if on_event is not None:
            await on_event(event)
        return JSONResponse({"ok": True})

    return Route("/webhooks/evolution", receive, methods=["POST"])
