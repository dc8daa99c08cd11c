"""The campaign sender: claims pending recipients, asks the anti-ban engine for an instance, sends.

One claim is one transaction: the due recipients are locked (`FOR UPDATE SKIP LOCKED`), checked
against the tenant's suppression list (an opt-out that arrived after the import stops the
message), their text is drawn (once, seeded by campaign and phone, then kept), and the engine's
reservation and the row's `sending` mark commit together before any byte goes to Evolution.
A process that dies in between leaves the row `sending`; the sweep turns it `uncertain` once no
live sender can still be waiting for Evolution's answer, and `uncertain` is never resent (a later
messages.update for that number on that instance resolves it). So a recipient gets at most one
message per campaign across crashes, restarts and release swaps.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import psycopg
import trio
from psycopg_pool import PoolTimeout

from oraclewad.services.broadcast import store
from oraclewad.services.broadcast.metrics import BroadcastMetrics
from oraclewad.services.broadcast.recipients import variables
from oraclewad.services.suppression import SuppressionList
from oraclewad.templating import TemplateError, TemplateSet, parse_set

BATCH = 20
IDLE_WAIT = 5.0       # seconds between polls when nothing is due (an API call or an event wakes it)
SWEEP_EVERY = 5.0
RETRY_RECORD = 1.0


def render(templates: Any, campaign_id: int, phone: str, name: str, values: dict[str, str]) -> str:
    """The recipient's text: seeded by campaign and phone, so drawing it again gives the same."""
    return _template_set(templates).render(variables(name, phone, values), seed=f"{campaign_id}:{phone}")


_CACHE: dict[str, TemplateSet] = {}


def _template_set(templates: Any) -> TemplateSet:
    import json

    key = json.dumps(templates, sort_keys=True)
    found = _CACHE.get(key)
    if found is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        found = _CACHE[key] = parse_set(templates, "templates", None)
    return found


class Sender:
    def __init__(self, *, db: Callable[..., Any], client: Any, engine: Any, suppression: SuppressionList,
                 metrics: BroadcastMetrics, clock: Callable[[], float], log: Any, errors: Any,
                 stale_after: float, on_figures: Callable[[Any], Any] | None = None) -> None:
        self.db = db
        self.client = client
        self.engine = engine
        self.suppression = suppression
        self.metrics = metrics
        self.clock = clock
        self.log = log
        self.errors = errors
        self.stale_after = stale_after   # a `sending` row this old has no live sender waiting
        self.on_figures = on_figures
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"
        self.waiting: tuple[float | None, str] = (None, "")   # the engine's last Wait
        self.turns: list[int] = []     # running campaigns, least recently served first (fair share)
        self.in_flight = 0
        self.idle_wait = IDLE_WAIT
        self.sweep_every = SWEEP_EVERY
        self.sleeping_until: float | None = None   # trio time it sleeps until (a test drives a clock by it)
        self._wakeup = trio.Event()

    def poke(self) -> None:
        """Something may be sendable now (a start, a resume, an instance back): look at once."""
        self._wakeup.set()

    async def run(self) -> None:
        next_sweep = 0.0
        async with trio.open_nursery() as sending:
            while True:
                now = self.clock()
                try:
                    if now >= next_sweep:
                        await self.sweep(now)
                        next_sweep = now + self.sweep_every
                    if await self._claim_and_send(sending, now):
                        continue
                    next_due = await self.db(store.next_due)
                except (psycopg.Error, PoolTimeout) as exc:
                    self.errors.error("broadcast sender: database unavailable, retrying",
                                      extra={"error": type(exc).__name__})
                    await trio.sleep(1.0)
                    continue
                wait = self.idle_wait
                if next_due is not None:
                    until, _ = self.waiting
                    wake_at = max(next_due, until) if until is not None else now + self.idle_wait
                    wait = min(self.idle_wait, max(wake_at - now, 0.001), max(next_sweep - now, 0.001))
                self.sleeping_until = trio.current_time() + wait
                with trio.move_on_after(wait):
                    await self._wakeup.wait()
                self.sleeping_until = None
                self._wakeup = trio.Event()

    async def sweep(self, now: float) -> None:
        stale = await self.db(store.sweep_stale, now - self.stale_after, now)
        if stale:
            self.errors.warning("campaign messages with unknown outcome marked uncertain (never resent)",
                                extra={"count": stale})
        for campaign_id, status in await self.db(store.tick, now):
            self.log.info(f"campaign {status}", extra={"campaign": campaign_id, "status": status})
        observe = getattr(self.engine, "observe", None)
        if observe is not None:
            await self.db(observe, now)
        if self.on_figures is not None:
            await self.on_figures(now)

    async def _claim_and_send(self, nursery: trio.Nursery, now: float) -> int:
        claimed = await self.db(self._claim, now)
        for msg, lease in claimed:
            self.in_flight += 1
            nursery.start_soon(self._send, msg, lease)
        return len(claimed)

    def _served(self, campaign_id: int) -> None:
        """Round robin: the campaign that just got a send goes to the back of the turns."""
        if campaign_id in self.turns:
            self.turns.remove(campaign_id)
        self.turns.append(campaign_id)
        del self.turns[:-64]    # only running campaigns matter; finished ones age out

    def _claim(self, conn: psycopg.Connection, now: float) -> list[tuple[store.Claimed, Any]]:
        from oraclewad.services.antiban import Lease, Skip

        claimed: list[tuple[store.Claimed, Any]] = []
        with conn.transaction():
            due = store.due(conn, now, BATCH, self.turns)
            if not due:
                self.waiting = (None, "")
                return claimed
            # Checked again now: an opt-out may have come after the import.
            blocked = (self.suppression.contains_sync(m.phone for m in due)
                       if self.suppression.enabled else set())
            for msg in due:
                if msg.phone in blocked:
                    store.set_status(conn, msg.id, "suppressed", "the contact opted out", now)
                    self.log.info("recipient suppressed at send time",
                                  extra={"campaign": msg.campaign_id, "recipient": msg.id})
                    continue
                try:
                    body = msg.body or render(msg.templates, msg.campaign_id, msg.phone, msg.name, msg.vars)
                except TemplateError as exc:  # validated at create/edit; a hand-edited row may not be
                    store.set_status(conn, msg.id, "failed", f"template: {exc}", now)
                    continue
                if not body:
                    store.set_status(conn, msg.id, "failed", "the template rendered an empty text", now)
                    continue
                decision = self.engine.reserve(conn, now, text=body, phone=msg.phone)
                if isinstance(decision, Lease):
                    claimed.append((store.claim(conn, msg, body, decision.instance, self.worker, now),
                                    decision))
                    self._served(msg.campaign_id)
                elif isinstance(decision, Skip):
                    store.set_status(conn, msg.id, "invalid", decision.reason, now)
                else:  # Wait: no instance may send now; the rest of the batch waits with it
                    store.keep_body(conn, msg.id, body)
                    self.waiting = (decision.until, decision.reason)
                    break
            else:
                self.waiting = (None, "")
        return claimed

    async def _send(self, msg: store.Claimed, lease: Any) -> None:
        try:
            await self._send_and_record(msg, lease)
        finally:
            self.in_flight -= 1
            self.poke()

    async def _send_and_record(self, msg: store.Claimed, lease: Any) -> None:
        from oraclewad.services.evolution import EvolutionError, FailureKind

        started = time.perf_counter()
        error: EvolutionError | None = None
        sent = None
        try:
            sent = await self.client.send_text(msg.instance, msg.phone, msg.body,
                                               delay_ms=int(getattr(lease, "delay_ms", 0)))
        except EvolutionError as exc:
            error = exc
        elapsed = time.perf_counter() - started
        now = self.clock()
        extra = {"campaign": msg.campaign_id, "recipient": msg.id, "instance": msg.instance}
        if sent is not None:
            await self._record(self._outcome, now, lease, None, store.record_sent,
                               (msg, sent.message_id, now), sent.message_id)
            self.log.info("message sent", extra={**extra, "send_ms": round(elapsed * 1000, 1)})
            self.metrics.sends.labels("sent").inc()
            return
        assert error is not None
        kind = error.kind
        self.metrics.sends.labels(str(kind)).inc()
        if kind == FailureKind.AMBIGUOUS:
            await self._record(self._outcome, now, lease, error, store.set_status,
                               (msg.id, "uncertain", f"outcome unknown: {error}", now))
            self.errors.warning("campaign send outcome unknown: uncertain, not resent",
                                extra={**extra, "error": str(error)})
        elif kind == FailureKind.NOT_ON_WHATSAPP:
            await self._record(self._outcome, now, lease, error, store.set_status,
                               (msg.id, "invalid", "the number is not on WhatsApp", now))
        elif kind == FailureKind.REJECTED:
            await self._record(self._outcome, now, lease, error, store.set_status,
                               (msg.id, "failed", f"Evolution refused it: {error}", now))
            self.errors.error("campaign send rejected", extra={**extra, "error": str(error)})
        else:
            # Connection closed (another instance takes it), unauthorized, 5xx: try again later.
            delay = {FailureKind.CONNECTION_CLOSED: 1.0, FailureKind.UNAUTHORIZED: 60.0}.get(kind, 5.0)
            await self._record(self._outcome, now, lease, error, store.postpone,
                               (msg.id, now + delay, f"retrying: {error}", now))
            log = self.errors.error if kind == FailureKind.UNAUTHORIZED else self.errors.warning
            log("campaign send failed, will retry", extra={**extra, "kind": str(kind), "error": str(error)})

    def _outcome(self, conn: psycopg.Connection, now: float, lease: Any, error: Any,
                 fn: Callable[..., Any], args: tuple[Any, ...], message_id: str | None = None) -> None:
        # The row's outcome and the engine's release commit together.
        with conn.transaction():
            fn(conn, *args)
            self.engine.release(conn, lease, error, now, message_id)

    async def _record(self, fn: Callable[..., Any], *args: Any) -> None:
        # The outcome must reach the database; until it does the row stays `sending` (and would
        # turn `uncertain` if this process died), never pending again.
        while True:
            try:
                with trio.CancelScope(shield=True):
                    await self.db(fn, *args)
                return
            except (psycopg.Error, PoolTimeout) as exc:
                self.errors.error("cannot record a campaign send outcome yet, retrying",
                                  extra={"error": type(exc).__name__})
                await trio.sleep(RETRY_RECORD)
