"""The campaign sender: claims pending recipients, asks the anti-ban engine for an instance, sends.

One claim is one transaction: the due recipients are locked (`FOR UPDATE SKIP LOCKED`), checked
against the tenant's suppression list (an opt-out that arrived after the import stops the
message), their text is drawn (once, seeded by campaign and phone, then kept), and the engine's
reservation and the row's `sending` mark commit together before any byte goes to Evolution.
A process that dies in between leaves the row `sending`; the sweep turns it `uncertain` once no
live sender can still be waiting for Evolution's answer, and `uncertain` is never resent (an ack
for that number on that instance may resolve it: services/outbox matches acks, and records each
send's outcome). So a recipient gets at most one message per campaign across crashes, restarts
and release swaps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import trio

from oraclewad.services.broadcast import store
from oraclewad.services.broadcast.metrics import BroadcastMetrics
from oraclewad.services.broadcast.recipients import variables
from oraclewad.services.outbox.loop import ClaimLoop, SenderParts
from oraclewad.services.suppression import SuppressionList
from oraclewad.templating import TemplateError, TemplateSet, parse_set

BATCH = 20
IDLE_WAIT = 5.0       # seconds between polls while work is in sight (an API call or an event wakes it)
SWEEP_EVERY = 5.0
IDLE_SWEEP_EVERY = 30.0   # with no campaign running or about to start, nothing `sending` or held
OUTBOX = store.OUTBOX


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


class Sender(SenderParts):
    def __init__(self, *, db: Callable[..., Any], client: Any, engine: Any, suppression: SuppressionList,
                 metrics: BroadcastMetrics, clock: Callable[[], float], log: Any, errors: Any,
                 stale_after: float, on_figures: Callable[[Any], Any] | None = None) -> None:
        super().__init__(outbox=OUTBOX, db=db, client=client, engine=engine, suppression=suppression,
                         metrics=metrics, clock=clock, log=log, errors=errors,
                         observe=lambda result, _s: metrics.sends.labels(result).inc())
        self.stale_after = stale_after   # a `sending` row this old has no live sender waiting
        self.on_figures = on_figures
        self.waiting: tuple[float | None, str] = (None, "")   # the engine's last Wait
        self.turns: list[int] = []     # running campaigns, least recently served first (fair share)
        self.in_flight = 0
        self.idle_wait = IDLE_WAIT
        self.sweep_every = SWEEP_EVERY
        self.idle_sweep_every = IDLE_SWEEP_EVERY
        self.sleeping_until: float | None = None   # trio time it sleeps until (a test drives a clock by it)
        self._wakeup = trio.Event()

    def poke(self) -> None:
        """Something may be sendable now (a start, a resume, an instance back): look at once."""
        self._wakeup.set()

    async def run(self) -> None:
        rounds = ClaimLoop(sweep=self.sweep, claim_and_send=self._claim_and_send, errors=self.errors,
                           label="broadcast sender")
        async with trio.open_nursery() as sending:
            while True:
                now = self.clock()
                again, next_due = await rounds.round(sending, now, self.sweep_every, self.idle_sweep_every)
                if again:
                    continue
                idle = rounds.idle_wait(now, self.idle_wait)
                wait = idle
                if next_due is not None:
                    until, _ = self.waiting
                    wake_at = max(next_due, until) if until is not None else now + idle
                    wait = min(idle, max(wake_at - now, 0.001), max(rounds.next_sweep - now, 0.001))
                self.sleeping_until = trio.current_time() + wait
                with trio.move_on_after(wait):
                    await self._wakeup.wait()
                self.sleeping_until = None
                self._wakeup = trio.Event()

    async def sweep(self, now: float) -> bool:
        """One connection, one transaction (the figures callback aside): the stale and held work
        and the campaigns' ticks when there is some, the engine's observe. Returns whether work is
        in sight: a campaign running or starting before the next idle sweep, rows `sending`, young
        held acks."""
        stale, resolved, changed, busy = await self.db(self._sweep_sync, now)
        if stale:
            self.errors.warning("campaign messages with unknown outcome marked uncertain (never resent)",
                                extra={"count": stale})
        if resolved:
            self.log.info("uncertain messages resolved by messages.update", extra={"count": resolved})
        for campaign_id, status in changed:
            self.log.info(f"campaign {status}", extra={"campaign": campaign_id, "status": status})
        if self.on_figures is not None:
            await self.on_figures(now)
        return busy

    def _sweep_sync(self, conn: psycopg.Connection,
                    now: float) -> tuple[int, int, list[tuple[int, str]], bool]:
        cutoff = now - self.stale_after
        stale, resolved, in_sight = OUTBOX.sweep(conn, cutoff, now)
        campaigns = store.campaigns_in_sight(conn, now + self.idle_sweep_every)
        changed = store.tick(conn, now) if campaigns else []
        observe = getattr(self.engine, "observe", None)
        if observe is not None:
            observe(conn, now)
        return stale, resolved, changed, in_sight or campaigns

    async def _claim_and_send(self, nursery: trio.Nursery, now: float) -> tuple[int, float | None]:
        claimed, next_due = await self.db(self._claim_or_next, now)
        for msg, lease in claimed:
            self.in_flight += 1
            nursery.start_soon(self._send, msg, lease)
        return len(claimed), next_due

    def _claim_or_next(self, conn: psycopg.Connection, now: float) -> tuple[list[tuple[store.Claimed, Any]],
                                                                              float | None]:
        claimed = self._claim(conn, now)
        return claimed, (None if claimed else store.next_due(conn))

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
                    OUTBOX.set_status(conn, msg.id, "suppressed", "the contact opted out", now)
                    self.log.info("recipient suppressed at send time",
                                  extra={"campaign": msg.campaign_id, "recipient": msg.id})
                    continue
                try:
                    body = msg.body or render(msg.templates, msg.campaign_id, msg.phone, msg.name, msg.vars)
                except TemplateError as exc:  # validated at create/edit; a hand-edited row may not be
                    OUTBOX.set_status(conn, msg.id, "failed", f"template: {exc}", now)
                    continue
                if not body:
                    OUTBOX.set_status(conn, msg.id, "failed", "the template rendered an empty text", now)
                    continue
                decision = self.engine.reserve(conn, now, text=body, phone=msg.phone)
                if isinstance(decision, Lease):
                    claimed.append((store.claim(conn, msg, body, decision.instance, self.worker, now),
                                    decision))
                    self._served(msg.campaign_id)
                elif isinstance(decision, Skip):
                    OUTBOX.set_status(conn, msg.id, "invalid", decision.reason, now)
                else:  # Wait: no instance may send now; the rest of the batch waits with it
                    store.keep_body(conn, msg.id, body)
                    self.waiting = (decision.until, decision.reason)
                    break
            else:
                self.waiting = (None, "")
        return claimed

    async def _send(self, msg: store.Claimed, lease: Any) -> None:
        try:
            await self.send_through_stop(msg.id, msg.instance, msg.phone, msg.body, lease,
                                         {"campaign": msg.campaign_id, "recipient": msg.id}, self.stale_after)
        finally:
            self.in_flight -= 1
            self.poke()
