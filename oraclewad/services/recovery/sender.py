"""The outbox sender: claims due messages, gets an instance from the anti-ban engine, sends, records.

A claim is one transaction (`FOR UPDATE SKIP LOCKED`): expired steps are dropped with the reason,
later steps outside the send window wait for it, opted-out numbers are suppressed (when the
tenant's `opt_out_scope` is "all"), and each remaining message is marked `sending` with its
instance before any byte goes to Evolution. After the send the outcome is recorded; a process that
dies in between leaves the row `sending`, and the sweep turns it `uncertain` once no live sender
can still be waiting for Evolution's answer. `uncertain` is never resent: a later messages.update
for the number on that instance resolves it (services/outbox: Outbox.apply_ack, settle_held), and
the send and its recorded outcome are services/outbox's Recorder.

The engine's reservation is made in the claim's transaction, so a claim and its slot commit or
roll back together; the slot's `delay_ms` (the per-instance gap) goes to Evolution as `delay`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import trio
from psycopg_pool import PoolTimeout

from oraclewad import recovery_plan
from oraclewad.services.antiban import Engine, Lease, Skip, Wait
from oraclewad.services.outbox.loop import ClaimLoop, SenderParts
from oraclewad.services.recovery import store
from oraclewad.services.recovery.metrics import RecoveryMetrics
from oraclewad.services.suppression import SuppressionList

BATCH = 20
IDLE_WAIT = 5.0          # seconds between polls while work is in sight (a new order.paid wakes it at once)
SWEEP_EVERY = 5.0
IDLE_SWEEP_EVERY = 30.0  # with nothing `sending`, held or due (services/outbox/loop.py)
OUTBOX = store.OUTBOX


@dataclass(frozen=True)
class Settings:
    max_delay_ms: int        # the longest gap the engine plays as Evolution's delay
    send_timeout: float
    opt_out_scope: str
    time_zone: str
    window: tuple[int, int]

    @classmethod
    def from_plan(cls, plan: dict[str, Any], send_timeout: float,
                  max_delay_ms: int | None = None) -> Settings:
        return cls(plan["typing_delay_ms"] if max_delay_ms is None else max_delay_ms, send_timeout,
                   plan["opt_out_scope"], plan["time_zone"],
                   recovery_plan.window_minutes(plan))

    @property
    def stale_after(self) -> float:
        """A `sending` row older than this has no live sender waiting for its answer."""
        return self.send_timeout + self.max_delay_ms / 1000 + 5.0


def in_window(now: float, zone: str, window: tuple[int, int]) -> tuple[bool, float]:
    """(inside the send window now, when it next opens)."""
    local = datetime.fromtimestamp(now, ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    start, end = window
    inside = start <= minute < end if start <= end else (minute >= start or minute < end)
    if inside:
        return True, now
    opens = local.replace(hour=start // 60, minute=start % 60, second=0, microsecond=0)
    if opens <= local:
        opens += timedelta(days=1)
    return False, opens.timestamp()


class Sender(SenderParts):
    def __init__(self, *, db: Callable[..., Any], client: Any, engine: Engine, settings: Settings,
                 suppression: SuppressionList, metrics: RecoveryMetrics,
                 clock: Callable[[], float], log: Any, errors: Any) -> None:
        super().__init__(outbox=OUTBOX, db=db, client=client, engine=engine, suppression=suppression,
                         metrics=metrics, clock=clock, log=log, errors=errors,
                         observe=lambda result, s: metrics.send_latency.labels(
                             "ok" if result == "sent" else result).observe(s))
        self.next_slot: float | None = None   # when the engine said an instance frees up
        self.settings = settings
        self.waiting_reason = ""
        self.figures: tuple[int, float] = (0, 0.0)   # due pending messages, age of the oldest
        self._wakeup = trio.Event()
        self._wake_at = -math.inf    # when the idle wait ends (-inf while a round runs)
        self._hint = math.inf        # the earliest due time poked during the round

    def poke(self, due: float | None = None) -> None:
        """Something may be sendable at `due` (None: now; an order.paid, an instance back, a send
        finished). Coalesced: it wakes the sender only when that is before its planned wake-up, so a
        burst of order.expired webhooks (reminders due in a minute) costs the sender nothing."""
        at = -math.inf if due is None else due
        self._hint = min(self._hint, at)
        if at < self._wake_at:
            self._wakeup.set()

    async def run(self) -> None:
        while True:
            try:
                await self.db(self.engine.ensure)
                break
            except (psycopg.Error, PoolTimeout):
                await trio.sleep(1.0)
        rounds = ClaimLoop(sweep=self._sweep, claim_and_send=self._claim_and_send, errors=self.errors,
                           label="sender")
        async with trio.open_nursery() as sending:
            while True:
                now = self.clock()
                self._wake_at, self._hint = -math.inf, math.inf
                again, next_due = await rounds.round(sending, now, SWEEP_EVERY, IDLE_SWEEP_EVERY)
                if again:
                    continue
                idle = rounds.idle_wait(now, IDLE_WAIT)
                wait = idle
                if next_due is not None:
                    free = self.next_slot
                    wake_at = max(next_due, free) if free is not None else now + idle
                    wait = min(idle, max(wake_at - now, 0.001))
                wake_at = min(now + wait, max(self._hint, now))   # poked during the round
                self._wakeup = trio.Event()
                self._wake_at = wake_at
                with trio.move_on_at(trio.current_time() + max(wake_at - now, 0.0)):
                    await self._wakeup.wait()

    async def _sweep(self, now: float) -> bool:
        """One connection, one transaction: the stale and held work when there is some, the outbox
        figures, the engine's observe. Returns whether work is in sight."""
        stale, resolved, (counts, depth, age), busy = await self.db(self._sweep_sync, now)
        if stale:
            self.errors.warning("messages with unknown outcome marked uncertain (never resent)",
                                extra={"count": stale})
        if resolved:
            self.log.info("uncertain messages resolved by messages.update", extra={"count": resolved})
        self.metrics.set_counts(counts, depth, age)
        self.figures = (depth, age)
        return busy

    def _sweep_sync(self, conn: psycopg.Connection,
                    now: float) -> tuple[int, int, tuple[dict[str, int], int, float], bool]:
        cutoff = now - self.settings.stale_after
        stale, resolved, in_sight = OUTBOX.sweep(conn, cutoff, now)
        figures = _outbox_figures(conn, now)
        self.engine.observe(conn, now)
        return stale, resolved, figures, in_sight or figures[1] > 0

    async def _claim_and_send(self, nursery: trio.Nursery, now: float) -> tuple[int, float | None]:
        claimed, next_due = await self.db(self._claim_or_next, now)
        for msg, lease in claimed:
            nursery.start_soon(self._send, msg, lease)
        return len(claimed), next_due

    def _claim_or_next(self, conn: psycopg.Connection,
                       now: float) -> tuple[list[tuple[store.Claimed, Lease]], float | None]:
        claimed = self._claim(conn, now)
        return claimed, (None if claimed else store.next_due(conn))

    def _claim(self, conn: psycopg.Connection, now: float) -> list[tuple[store.Claimed, Lease]]:
        s = self.settings
        claimed: list[tuple[store.Claimed, Lease]] = []
        with conn.transaction():
            # Drops and postponements happen even with no instance free, so they are not held up.
            due = store.due_messages(conn, now, BATCH)
            sendable: list[store.Due] = []
            for msg in due:
                if msg.expires_at is not None and msg.expires_at.timestamp() < now:
                    OUTBOX.set_status(conn, msg.id, "dropped",
                                     "max_age: not sent in time (no instance could send, or the window "
                                     "was closed)", now)
                    continue
                if msg.step > 1:
                    inside, opens = in_window(now, s.time_zone, s.window)
                    if not inside:
                        OUTBOX.postpone(conn, msg.id, opens, "waiting for the send window", now, "pending")
                        continue
                sendable.append(msg)
            if s.opt_out_scope == "all" and sendable and self.suppression.enabled:
                blocked = self.suppression.contains_sync(m.phone for m in sendable)
                for msg in [m for m in sendable if m.phone in blocked]:
                    OUTBOX.set_status(conn, msg.id, "suppressed", "the customer opted out", now)
                    sendable.remove(msg)
            self.next_slot = now
            for msg in sendable:
                got = self.engine.reserve(conn, now, text=msg.body, phone=msg.phone)
                if isinstance(got, Skip):
                    OUTBOX.set_status(conn, msg.id, "invalid", got.reason, now)
                    continue
                if isinstance(got, Wait):
                    self.next_slot = got.until
                    self.waiting_reason = got.reason
                    break
                claimed.append((store.claim(conn, msg, got.instance, self.worker, now), got))
        return claimed

    async def _send(self, msg: store.Claimed, lease: Lease) -> None:
        try:
            await self.send_through_stop(msg.id, msg.instance, msg.phone, msg.body, lease,
                                         {"message_id": msg.id, "kind": msg.kind}, self.settings.stale_after)
        finally:
            self.poke()   # the instance is free again


def _outbox_figures(conn: psycopg.Connection, now: float) -> tuple[dict[str, int], int, float]:
    """(rows by status, pending rows due, age of the oldest due) in one statement."""
    counts: dict[str, int] = {}
    depth, oldest = 0, None
    for status, n, due, first in conn.execute(
            "SELECT status, count(*), count(*) FILTER (WHERE send_after <= %(now)s),"
            " min(send_after) FILTER (WHERE send_after <= %(now)s) FROM outbound_messages GROUP BY status",
            {"now": store.ts(now)}).fetchall():
        counts[status] = n
        if status == "pending":
            depth, oldest = due, first
    return counts, depth, (now - oldest.timestamp()) if oldest else 0.0
