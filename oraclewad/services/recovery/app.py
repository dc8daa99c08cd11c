"""The recovery service's public HTTP app: order webhooks in, WhatsApp messages out.

POST /webhooks/orders      the shop's order.expired / order.paid (shopauth.py says who may post)
POST /webhooks/evolution   Evolution's events for this service's instances (services/outbox/events.py)
GET  /                     what this service is
Admin socket: GET /recovery/report?since=<seconds>  (oraclectl recovery, through the daemon)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad import recovery_plan
from oraclewad.services import http1, outbox
from oraclewad.services.antiban import Engine, Rules
from oraclewad.services.groupcommit import GroupCommit
from oraclewad.services.not_on_whatsapp import NotOnWhatsApp
from oraclewad.services.outbox import wiring
from oraclewad.services.recovery import payload, store
from oraclewad.services.recovery.metrics import RecoveryMetrics
from oraclewad.services.recovery.sender import Sender, Settings
from oraclewad.services.recovery.shopauth import Secret, ShopAuth, Unauthorized
from oraclewad.services.runtime import ServiceContext
from oraclewad.services.suppression import SuppressionList
from oraclewad.services.web import json_error_handlers

MIGRATIONS = Path(__file__).parent / "migrations"
BODY_LIMIT = 1024 * 1024
DB_WAIT = 2.0      # seconds to wait for a pooled connection before answering 503
RETRY_AFTER = "5"  # seconds; the shop's retry, not ours


class RecoveryService:
    """Everything one recovery process holds: config, clock, store access, metrics, sender."""

    def __init__(self, ctx: ServiceContext, *, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        plan, problems = recovery_plan.parse(dict(ctx.config.get("recovery") or {}))
        if problems:
            # The daemon validated the tenant file; a hand-written standalone config may still be wrong.
            raise ValueError("recovery: " + "; ".join(f"{k}: {m}" for k, m in problems))
        self.plan = store.Plan.from_raw(plan)
        self.auth = ShopAuth(_secrets(ctx.config), _tokens(ctx.config),
                             static_enabled=plan["static_token"], clock=clock)
        self.metrics = RecoveryMetrics(ctx.metrics)
        self.log = ctx.log("webhook")
        self.errors = ctx.log("error")
        self.suppression = SuppressionList((ctx.config.get("shared") or {}).get("dsn"), ctx.service)
        self.sender: Sender | None = None
        self.antiban: Engine | None = None
        client, instances = getattr(ctx, "evolution", None), getattr(ctx, "instances", None)
        if client is not None and instances is not None and ctx.pg is not None:
            client.timeout = plan["send_timeout"]
            names = list(getattr(instances, "states", None) or ctx.config.get("instances") or [])

            rules = Rules.for_service("recovery", ctx.config.get("antiban"), recovery=plan,
                                      send_timeout=plan["send_timeout"])
            self.antiban = Engine(service="recovery", names=names, rules=rules, instances=instances,
                                  log=ctx.log("antiban"), registry=ctx.metrics,
                                  numbers=NotOnWhatsApp(self.suppression.pool, ctx.service, self.errors))
            self.sender = Sender(db=self.db, client=client, engine=self.antiban,
                                 settings=Settings.from_plan(plan, plan["send_timeout"],
                                                             int(rules.delay_max * 1000)),
                                 suppression=self.suppression, metrics=self.metrics, clock=clock,
                                 log=ctx.log("recovery"), errors=self.errors)
        self.events = outbox.EvolutionEvents(
            outbox=store.OUTBOX, db=self.db, suppression=self.suppression,
            counter=self.metrics.evolution_events, engine=self.antiban, manual=store.record_manual,
            clock=clock, poke=self.poke, log=self.log)

    def poke(self, due: float | None = None) -> None:
        if self.sender is not None:
            self.sender.poke(due)

    def outbox_health(self) -> dict[str, Any]:
        if self.sender is None:
            return {"ok": True, "detail": "no sender: this service has no [evolution] url or instances"}
        depth, age = self.sender.figures
        detail = f"{depth} due message(s) waiting, the oldest for {age:.0f} s"
        if depth and self.sender.waiting_reason:
            detail += f" ({self.sender.waiting_reason})"
        return {"ok": True, "detail": detail, "due": depth, "age_s": round(age, 1)}

    async def db(self, fn: Callable[..., Any], *args: Any, wait: float = DB_WAIT) -> Any:
        return await self.ctx.db(fn, *args, wait=wait)

    async def orders_webhook(self, request: Request) -> Response:
        try:
            body: bytes | None = await _read_body(request)
        except _TooLarge:
            body = None
        status, doc, headers = await self.take_webhook(request.headers, body, _client(request))
        return JSONResponse(doc, status_code=status, headers=headers)

    async def orders_webhook_http1(self, request: http1.Request) -> http1.Answer:
        """The same route on the public port's lean server (services/http1.py)."""
        status, doc, headers = await self.take_webhook(
            request.header_map(), None if request.too_large else request.body,
            request.client[0] if request.client else None)
        return http1.json_answer(status, doc, headers)

    async def take_webhook(self, headers: Mapping[str, str], body: bytes | None,
                           client: str | None) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        """(status, JSON body, extra headers) for one order webhook; body None: over BODY_LIMIT."""
        event = "unknown"
        if body is None:
            self.metrics.webhook(event, "too_large")
            return _error(413, "body", f"the body is larger than {BODY_LIMIT} bytes")
        try:
            verified = self.auth.verify(headers, body)
        except Unauthorized as exc:
            self.metrics.webhook(event, "unauthorized")
            self.log.warning("webhook refused", extra={"reason": str(exc), "client": client})
            return 401, {"error": "unauthorized", "detail": str(exc)}, None
        try:
            ev = payload.parse(body, self.plan.raw["time_zone"])
        except payload.InvalidPayload as exc:
            self.metrics.webhook(event, "invalid")
            self.log.warning("webhook invalid", extra={"field": exc.field, "reason": exc.message})
            return _error(422, exc.field, exc.message)
        event = ev.kind
        try:
            result = await self._group().submit(store.Incoming(ev, verified.delivery_id, verified.scheme,
                                                               self.clock()))
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
            # Our validation let through something PostgreSQL refuses: retrying cannot help.
            self.metrics.webhook(event, "invalid")
            self.errors.error("webhook refused by the database", extra={"event": event, "error": str(exc)})
            return _error(422, "body", "holds a value the database cannot store")
        except (psycopg.Error, PoolTimeout) as exc:
            self.metrics.webhook(event, "unavailable")
            self.errors.error("webhook not stored: database unavailable",
                              extra={"event": event, "error": type(exc).__name__})
            return (503, {"error": "unavailable", "detail": "the database is unavailable; retry later"},
                    {"Retry-After": RETRY_AFTER})
        if result.duplicate:
            self.metrics.webhook(event, "duplicate")
            return 200, {"status": "duplicate", "order_id": ev.order_id}, None
        self.metrics.webhook(event, "accepted")
        if result.recovered:
            self.metrics.recovered(float(ev.total))
        if result.first_due is not None:
            self.poke(result.first_due)
        return 202, {"status": "accepted", "order_id": ev.order_id, "event_id": result.event_id}, None

    def _group(self) -> GroupCommit[store.Incoming, store.Ingested]:
        # One transaction (one commit) for the webhooks arriving together; each 202 still only
        # after its own event committed (services/groupcommit.py).
        group = self.__dict__.get("_webhook_group")
        if group is None:
            async def store_batch(batch: list[store.Incoming]) -> list[store.Ingested | Exception]:
                results = await self.db(store.ingest_many, batch, self.plan)
                accepted = [f"{i.event.order_id} {i.event.kind} #{r.event_id} {i.scheme}"
                            f" messages={r.messages} cancelled={r.cancelled}"
                            for i, r in zip(batch, results, strict=True)
                            if isinstance(r, store.Ingested) and not r.duplicate]
                # A line per batch (at most 50 events each), not per request: at a thousand
                # webhooks a second, writing and filing the lines cost more than storing them.
                for at in range(0, len(accepted), 50):
                    self.log.info("webhooks accepted", extra={"count": len(accepted[at:at + 50]),
                                                              "events": accepted[at:at + 50]})
                return results

            group = self.__dict__["_webhook_group"] = GroupCommit(store_batch)
        return group

    async def report(self, request: Request) -> Response:
        raw = request.query_params.get("since", str(7 * 86400))
        try:
            since = float(raw)
            if not 0 < since < 10 * 365 * 86400:
                raise ValueError
        except ValueError:
            status, doc, _ = _error(400, "since", "must be a number of seconds between 1 and ten years")
            return JSONResponse(doc, status_code=status)
        try:
            body = await self.db(store.report, self.clock() - since)
        except (psycopg.Error, PoolTimeout):
            return JSONResponse({"error": "unavailable", "detail": "the database is unavailable"},
                                status_code=503, headers={"Retry-After": RETRY_AFTER})
        body.update({"tenant": self.ctx.tenant, "since_s": since})
        return JSONResponse(body)

    def index(self, request: Request) -> Response:
        return JSONResponse({
            "service": "recovery", "tenant": self.ctx.tenant, "display_name": self.ctx.display_name,
            "release": self.ctx.release, "status": "ready",
            "note": "recovery: order webhooks from the shop become WhatsApp reminders and thank-yous",
            "endpoints": [{"method": "POST", "path": "/webhooks/orders",
                           "description": "order.expired / order.paid from the shop (signed)"},
                          {"method": "POST", "path": "/webhooks/evolution",
                           "description": "Evolution events for this service's instances"}],
        })


class _TooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > BODY_LIMIT:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_LIMIT:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, field: str, message: str) -> tuple[int, dict[str, Any], None]:
    return status, {"error": "invalid" if status == 422 else "bad request", "field": field,
                    "detail": f"{field}: {message}"}, None


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _secrets(config: Any) -> list[Secret]:
    listed = config.get("webhook_secrets")
    if isinstance(listed, list):
        out = [Secret(str(s["secret"]), float(s["until"]) if s.get("until") is not None else None)
               for s in listed if isinstance(s, dict) and s.get("secret")]
        if out:
            return out
    current = config.get("webhook_secret")
    return [Secret(current, None)] if isinstance(current, str) and current else []


def _tokens(config: Any) -> list[Secret]:
    out = [Secret(config["webhook_token"], None)] if isinstance(config.get("webhook_token"), str) else []
    for item in config.get("webhook_tokens_previous") or []:
        if isinstance(item, dict) and item.get("token") and item.get("until") is not None:
            out.append(Secret(str(item["token"]), float(item["until"])))
    return out


def build_app(ctx: ServiceContext, *, clock: Callable[[], float] = time.time) -> Starlette:
    service = RecoveryService(ctx, clock=clock)
    routes = [Route("/", service.index, methods=["GET"]),
              Route("/webhooks/orders", service.orders_webhook, methods=["POST"]),
              wiring.attach(ctx, on_event=service.events, engine=service.antiban, sender=service.sender,
                            suppression=service.suppression, db=service.db, clock=clock)]
    if hasattr(ctx, "admin_routes"):
        ctx.admin_routes.append(Route("/recovery/report", service.report, methods=["GET"]))
    if hasattr(ctx, "health_checks"):
        ctx.health_checks["outbox"] = service.outbox_health
    app = Starlette(routes=routes, exception_handlers=json_error_handlers())
    app.state.recovery = service
    # The public port's lean server answers this route itself (services/http1.py), the rest
    # through the app.
    app.state.http1_routes = {("POST", "/webhooks/orders"): http1.Route(service.orders_webhook_http1,
                                                                         BODY_LIMIT)}
    return app

