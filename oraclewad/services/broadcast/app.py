"""The broadcast service: paced campaigns to imported recipients (docs/broadcast.md).

Public port: the campaign API (api.py) with the tenant's bearer token, POST /webhooks/evolution
(its instances' events), GET / (what this is). Admin socket: the same campaign API, which
`oraclectl campaign ...` reaches through the daemon's ServiceCall.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad import broadcast_plan
from oraclewad.services import outbox
from oraclewad.services.broadcast import api, store
from oraclewad.services.broadcast.metrics import BroadcastMetrics
from oraclewad.services.broadcast.recipients import Parsed
from oraclewad.services.broadcast.sender import Sender, render
from oraclewad.services.not_on_whatsapp import NotOnWhatsApp
from oraclewad.services.outbox import wiring
from oraclewad.services.runtime import ServiceContext
from oraclewad.services.suppression import SuppressionList
from oraclewad.services.web import json_error_handlers

MIGRATIONS = Path(__file__).parent / "migrations"
DB_WAIT = 5.0
ETA_EVERY = 30.0   # seconds between the forecasts behind the ETA metric


class BroadcastService:
    """What one broadcast process holds: config, clock, store access, engine, sender, metrics."""

    def __init__(self, ctx: ServiceContext, *, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self.log = ctx.log("broadcast")
        self.errors = ctx.log("error")
        self.metrics = BroadcastMetrics(ctx.metrics)
        self.suppression = SuppressionList((ctx.config.get("shared") or {}).get("dsn"), ctx.service)
        self.engine: Any = None
        self._eta_at = float("-inf")
        self._etas: dict[int, float | None] = {}
        self._summary = (0, 0)   # running campaigns, their pending recipients (refreshed by the sweep)
        self.sender: Sender | None = None
        plan, problems = broadcast_plan.parse(dict(ctx.config.get("broadcast") or {}))
        if problems:
            # The daemon validated the tenant file; a hand-written standalone config may still be wrong.
            raise ValueError("; ".join(f"{k}: {m}" for k, m in problems))
        client, instances = ctx.evolution, ctx.instances
        if client is not None and instances is not None and ctx.pg is not None:
            from oraclewad.services.antiban import Engine, Rules

            # Past this (plus the typing gap) a send is `uncertain`: [broadcast] send_timeout.
            send_timeout = plan["send_timeout"]
            rules = Rules.for_service("broadcast", dict(ctx.config.get("antiban") or {}),
                                      send_timeout=send_timeout)
            client.timeout = send_timeout
            self.engine = Engine(service="broadcast", names=list(instances.states), rules=rules,
                                 instances=instances, log=ctx.log("antiban"), registry=ctx.metrics,
                                 numbers=NotOnWhatsApp(self.suppression.pool, ctx.service, self.errors))
            self.sender = Sender(db=self.db, client=client, engine=self.engine, suppression=self.suppression,
                                 metrics=self.metrics, clock=clock, log=self.log, errors=self.errors,
                                 stale_after=rules.delay_max + send_timeout + 30.0,
                                 on_figures=self.refresh_figures)
        self.events = outbox.EvolutionEvents(
            outbox=store.OUTBOX, db=self.db, suppression=self.suppression,
            counter=self.metrics.evolution_events, engine=self.engine, manual=None,
            clock=clock, poke=self.poke, log=self.log)

    def poke(self) -> None:
        if self.sender is not None:
            self.sender.poke()

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.ctx.db(fn, *args, wait=DB_WAIT)

    # ---- figures: counts, progress, ETA ------------------------------------------------------

    def _figures(self, conn: Any, now: float, with_eta: bool = True) -> dict[int, dict[str, Any]]:
        """Per campaign: counts, and for running ones the ETA from the engine's schedule. Running
        campaigns take turns (round robin), so one with p left finishes once every running
        campaign has sent min(its own left, p): the forecast for the sum of those."""
        by = store.all_counts(conn)
        out: dict[int, dict[str, Any]] = {cid: {"counts": c} for cid, c in by.items()}
        left = {cid: by.get(cid, {}).get("pending", 0) + by.get(cid, {}).get("sending", 0)
                for cid in store.running_order(conn)}
        for cid, mine in left.items():
            ahead = sum(min(n, mine) for n in left.values())
            eta = self._forecast(conn, now, ahead) if with_eta else {"eta": self._etas.get(cid)}
            out.setdefault(cid, {"counts": by.get(cid, {})}).update(eta)
        return out

    def _forecast(self, conn: Any, now: float, pending: int) -> dict[str, Any]:
        if self.engine is None:
            return {"eta": None, "eta_reason": "this service has no [evolution] url or instances"}
        if pending == 0:
            return {"eta": now, "eta_reason": ""}
        f = self.engine.forecast(conn, now, pending)
        return {"eta": f.finish_at, "eta_reason": f.reason, "per_instance": f.per_instance}

    async def refresh_figures(self, now: float) -> None:
        # Counts every sweep; the forecast (a replay of the schedule, ~N/50,000 s of CPU) at most
        # every ETA_EVERY s here: `show` always computes a fresh one.
        with_eta = now >= self._eta_at + ETA_EVERY or now < self._eta_at
        figures = await self.db(self._figures, now, with_eta)
        if with_eta:
            self._eta_at = now
            self._etas = {cid: f["eta"] for cid, f in figures.items() if "eta" in f}
            for cid, eta in self._etas.items():
                await self.db(store.set_eta, cid, eta, False)
        running = [f for f in figures.values() if "eta" in f]
        self._summary = (len(running), sum(f["counts"].get("pending", 0) for f in running))
        self.metrics.set_campaigns({cid: (f["counts"], (f["eta"] - now) if f.get("eta") else None, "eta" in f)
                                    for cid, f in figures.items()})

    def health(self) -> dict[str, Any]:
        """/healthz check: campaigns waiting is no failure; the detail says what they wait for."""
        if self.sender is None:
            return {"ok": True, "detail": "no sender: this service has no [evolution] url or instances"}
        running, pending = self._summary
        detail = f"{running} running campaign(s), {pending} recipient(s) pending"
        _, why = self.sender.waiting
        if pending and why:
            detail += f" (waiting: {why})"
        return {"ok": True, "detail": detail, "running": running, "pending": pending}

    def _show(self, conn: Any, campaign_id: int, now: float) -> dict[str, Any]:
        c = store.campaign(conn, campaign_id)
        counts = store.counts(conn, campaign_id)
        total = sum(counts.values())
        left = counts.get("pending", 0) + counts.get("sending", 0)
        done = sum(counts.get(s, 0) for s in store.DONE)
        out: dict[str, Any] = {**c, "counts": counts, "total": total, "sent": done,
                               "pending": counts.get("pending", 0), "uncertain": counts.get("uncertain", 0),
                               "failed": counts.get("failed", 0) + counts.get("invalid", 0),
                               "progress": round((total - left) / total, 4) if total else 0.0, "now": now}
        if c["status"] == "running":
            out.update(self._figures(conn, now).get(campaign_id, {}))
            out["counts"] = counts
        elif c["status"] in ("draft", "paused", "scheduled") and left:
            # If it ran alone from now (or from its time): how long it would take.
            start = max(now, c["scheduled_at"] or now) if c["status"] == "scheduled" else now
            f = self._forecast(conn, start, left)
            out["eta"] = None
            out["eta_reason"] = f"{c['status']}: not sending"
            out["duration_if_started"] = (f["eta"] - start) if f.get("eta") else None
            if c["status"] == "scheduled":
                out["eta"] = f["eta"]
                out["eta_reason"] = f.get("eta_reason", "")
        out["eta_seconds"] = max(out["eta"] - now, 0.0) if out.get("eta") else None
        waiting_until, why = self.sender.waiting if self.sender is not None else (None, "")
        if c["status"] == "running" and left and why:
            out["waiting"] = {"reason": why, "until": waiting_until}
        return out

    async def show(self, campaign_id: int) -> dict[str, Any]:
        return await self.db(self._show, campaign_id, self.clock())

    async def listing(self) -> list[dict[str, Any]]:
        return await self.db(store.listing)

    # ---- operations --------------------------------------------------------------------------

    async def import_parsed(self, campaign_id: int, parsed: Parsed, where: str) -> dict[str, Any]:
        phones = [r.phone for r in parsed.rows]
        suppressed = await self.suppression.contains(phones) if self.suppression.enabled else set()
        result = await self.db(store.import_rows, campaign_id, parsed.rows, parsed.columns, suppressed, where,
                               self.clock())
        answer = {"campaign": campaign_id, "accepted": result["accepted"],
                  "invalid": len(parsed.invalid),
                  "duplicate": len(parsed.duplicate) + len(result["duplicate"]),
                  "suppressed": len(result["suppressed"]), "columns": parsed.columns,
                  "invalid_lines": parsed.invalid[:api.LISTED_MAX],
                  "duplicate_lines": (parsed.duplicate + result["duplicate"])[:api.LISTED_MAX],
                  "suppressed_lines": result["suppressed"][:api.LISTED_MAX]}
        for outcome in ("accepted", "invalid", "duplicate", "suppressed"):
            self.metrics.imported.labels(outcome).inc(answer[outcome])
        self.log.info("recipients imported", extra={k: answer[k] for k in (
            "campaign", "accepted", "invalid", "duplicate", "suppressed")})
        return answer

    async def send_test(self, campaign_id: int, phone: str, name: str | None,
                        values: dict[str, str]) -> dict[str, Any]:
        """The campaign's text, rendered for its first recipient (or the given name/vars), to a test
        number, through the anti-ban engine like any send from these numbers, played without
        typing so the command answers at once: it counts against today's cap and the text limit,
        waits for a send in flight, and goes only once the instance's gap has passed in silence.
        When no instance may send it now: 409 with the engine's reason and when to try again."""
        from oraclewad.services.antiban import Lease, Skip
        from oraclewad.services.evolution import EvolutionError

        c = await self.db(store.campaign, campaign_id)
        sample = await self.db(store.sample_recipient, campaign_id)
        s_phone, s_name, s_vars = sample if sample else (phone, "", {})
        body = render(c["templates"], campaign_id, s_phone, name if name is not None else s_name,
                      {**s_vars, **values})
        client = self.ctx.evolution
        if client is None or self.engine is None:
            raise store.Conflict("this service has no [evolution] url or instances to send from")
        lease = await self.db(self._reserve_test, self.clock(), body, phone)
        if isinstance(lease, Skip):
            raise store.Conflict(f"the test was not sent: {lease.reason}")
        if not isinstance(lease, Lease):
            when = "" if lease.until is None else f"; try again after {self.engine.when(lease.until)}"
            raise store.Conflict(f"no instance may send the test now ({lease.reason}){when}")
        try:
            sent = await client.send_text(lease.instance, phone, body, delay_ms=lease.delay_ms)
        except EvolutionError as exc:
            await self.db(self.engine.release, lease, exc, self.clock())
            await self.db(store.record_test, campaign_id, phone, body, lease.instance, None, "failed",
                          self.clock())
            raise store.Conflict(f"the test message was not sent: {exc}") from None
        await self.db(self.engine.release, lease, None, self.clock(), sent.message_id)
        await self.db(store.record_test, campaign_id, phone, body, lease.instance, sent.message_id, "sent",
                      self.clock())
        self.log.info("test message sent", extra={"campaign": campaign_id, "instance": lease.instance})
        return {"campaign": campaign_id, "phone": phone, "instance": lease.instance, "text": body,
                "message_id": sent.message_id}

    def _reserve_test(self, conn: Any, now: float, body: str, phone: str) -> Any:
        return self.engine.reserve(conn, now, text=body, phone=phone, quiet=True)

    async def act(self, campaign_id: int, action: str, at: float | None) -> dict[str, Any]:
        now = self.clock()
        if action in ("start", "resume"):   # templates may have been edited while paused
            c = await self.db(store.campaign, campaign_id)
            problem = await self.db(_start_problem, c)
            if problem:
                raise api.Invalid(*problem)
        await self.db(store.transition, campaign_id, action, now, at)
        self.log.info(f"campaign {action}", extra={"campaign": campaign_id, "at": at})
        self.poke()
        shown = await self.show(campaign_id)
        if action in ("start", "resume") and shown["status"] == "running":
            # The ETA shown at the start is kept, to compare with when it actually finished.
            await self.db(store.set_eta, campaign_id, shown.get("eta"), action == "start")
        return shown

    def index(self, request: Request) -> Response:
        return JSONResponse({
            "service": "broadcast", "tenant": self.ctx.tenant, "display_name": self.ctx.display_name,
            "release": self.ctx.release, "status": "ready",
            "note": "broadcast: paced WhatsApp campaigns (Authorization: Bearer <static token>)",
            "endpoints": [{"method": "GET|POST", "path": "/campaigns"},
                          {"method": "GET|PATCH", "path": "/campaigns/{id}"},
                          {"method": "POST", "path": "/campaigns/{id}/recipients"},
                          {"method": "POST", "path": "/campaigns/{id}/test|start|pause|resume|cancel"},
                          {"method": "POST", "path": "/webhooks/evolution"}],
        })


def _start_problem(conn: Any, c: dict[str, Any]) -> tuple[str, str] | None:
    """Refuse a start that cannot work: no recipients, or a {{variable}} no recipient has."""
    from oraclewad.templating import _Var, parse_set

    n = store.counts(conn, c["id"])
    if not sum(n.values()):
        return ("recipients", "the campaign has no recipients: `oraclectl campaign import` first")
    known = {"name", "first_name", "phone", *(c["columns"] or [])}
    used: set[str] = set()

    def walk(parts: Any) -> None:
        for p in parts:
            if isinstance(p, _Var):
                used.add(p.name)
            elif not isinstance(p, str):
                for choice in p.choices:
                    walk(choice)

    for v in parse_set(c["templates"], "templates", None).variations:
        walk(v.parts)
    missing = sorted(used - known)
    if missing:
        return ("templates", f"{{{{{missing[0]}}}}} is not a column of the imported recipients "
                             f"(columns: {', '.join(sorted(known))}): edit the template or import it")
    return None


def _tokens(config: Any) -> Callable[[], list[str]]:
    def tokens() -> list[str]:
        out = [config["webhook_token"]] if isinstance(config.get("webhook_token"), str) else []
        now = time.time()
        out += [str(i["token"]) for i in config.get("webhook_tokens_previous") or []
                if isinstance(i, dict) and i.get("token") and float(i.get("until") or 0) > now]
        return out
    return tokens


def build_app(ctx: ServiceContext, *, clock: Callable[[], float] = time.time) -> Starlette:
    service = BroadcastService(ctx, clock=clock)
    routes = [Route("/", service.index, methods=["GET"]), *api.routes(service, token=_tokens(ctx.config)),
              wiring.attach(ctx, on_event=service.events, engine=service.engine, sender=service.sender,
                            suppression=service.suppression, db=service.db, clock=clock)]
    ctx.admin_routes.extend(api.routes(service))
    ctx.health_checks["campaigns"] = service.health
    app = Starlette(routes=routes, exception_handlers=json_error_handlers())
    app.state.broadcast = service
    return app

