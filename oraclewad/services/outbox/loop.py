"""What both senders are made of: their collaborators with a worker id and the outcome recorder
(SenderParts), and the claim round they repeat: sweep when due, claim and start sends, else learn
when the next message is due. Each sender keeps its own sleep between rounds (their wake-ups differ)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import trio
from psycopg_pool import PoolTimeout

from oraclewad.services.outbox.outcome import Recorder
from oraclewad.services.outbox.store import Outbox
from oraclewad.services.suppression import SuppressionList


class SenderParts:
    def __init__(self, *, outbox: Outbox, db: Callable[..., Any], client: Any, engine: Any,
                 suppression: SuppressionList, metrics: Any, clock: Callable[[], float], log: Any,
                 errors: Any, observe: Callable[[str, float], None]) -> None:
        self.db = db
        self.client = client
        self.engine = engine
        self.suppression = suppression
        self.metrics = metrics
        self.clock = clock
        self.log = log
        self.errors = errors
        # Names this process on the rows it claims.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"
        self.recorder = Recorder(outbox=outbox, db=db, engine=engine, clock=clock, log=log, errors=errors,
                                 observe=observe)

    async def send_through_stop(self, row_id: int, instance: str, phone: str, body: str, lease: Any,
                                extra: dict[str, Any], within: float) -> None:
        """Send a claimed row and record the outcome, even when a stop (SIGTERM: a restart, or a
        release swap's old process draining) cancels the sender meanwhile: a send cancelled on
        its way has an unknown outcome, so its row would turn uncertain and never go out. Bounded
        by `within` (stale_after, when the row is presumed lost anyway); the supervisor's stop
        grace bounds it too."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + within):
            await self.recorder.send(self.client, row_id, instance, phone, body, lease, extra)


class ClaimLoop:
    def __init__(self, *, sweep: Callable[[float], Awaitable[object]],
                 claim_and_send: Callable[[trio.Nursery, float], Awaitable[int]],
                 next_due: Callable[[], Awaitable[float | None]], errors: Any, label: str) -> None:
        self.sweep = sweep
        self.claim_and_send = claim_and_send
        self.next_due = next_due
        self.errors = errors
        self.label = label
        self.next_sweep = 0.0      # kept across a failed round, so a sweep that worked is not redone

    async def round(self, nursery: trio.Nursery, now: float, sweep_every: float) -> tuple[bool, float | None]:
        """(go round again at once, when the next message is due). A database outage is logged and
        retried a second later; the sends already started carry on."""
        try:
            if now >= self.next_sweep:
                await self.sweep(now)
                self.next_sweep = now + sweep_every
            if await self.claim_and_send(nursery, now):
                return True, None
            return False, await self.next_due()
        except (psycopg.Error, PoolTimeout) as exc:
            self.errors.error(f"{self.label}: database unavailable, retrying",
                              extra={"error": type(exc).__name__})
            await trio.sleep(1.0)
            return True, None
