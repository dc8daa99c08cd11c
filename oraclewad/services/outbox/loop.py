"""What both senders are made of: their collaborators with a worker id and the outcome recorder
(SenderParts), and the claim round they repeat: sweep when due, claim and start sends, else learn
when the next message is due. Each sender keeps its own sleep between rounds (their wake-ups differ).

An idle sender costs what its rounds cost (200 children on a small VPS: issue 15). So a sweep says
whether it saw work in sight (rows `sending`, recent held acks, messages due); while none is, the
next sweep comes `idle_sweep_every` later instead of `sweep_every`, and the sender sleeps until
then: new work pokes it (a webhook, an API call, a send finished). The slow sweep still catches
what no poke announces here (a `sending` row a swap's other process left behind: uncertain within
stale_after + idle_sweep_every). A claim that starts sends, or finds messages due that cannot go
yet, brings the short cadence back at once."""

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


# sweep(now) -> whether it saw work in sight; claim_and_send(nursery, now) -> (sends started, when
# the next message is due: asked in the claim's own transaction when none was started).
Sweep = Callable[[float], Awaitable[bool]]
ClaimAndSend = Callable[[trio.Nursery, float], Awaitable[tuple[int, float | None]]]


class ClaimLoop:
    def __init__(self, *, sweep: Sweep, claim_and_send: ClaimAndSend, errors: Any, label: str) -> None:
        self.sweep = sweep
        self.claim_and_send = claim_and_send
        self.errors = errors
        self.label = label
        self.next_sweep = 0.0      # kept across a failed round, so a sweep that worked is not redone
        self.busy = True           # work in sight: the short cadence (until a sweep sees none)

    async def round(self, nursery: trio.Nursery, now: float, sweep_every: float,
                    idle_sweep_every: float) -> tuple[bool, float | None]:
        """(go round again at once, when the next message is due). A database outage is logged and
        retried a second later; the sends already started carry on."""
        try:
            if now >= self.next_sweep:
                self.busy = await self.sweep(now)
                self.next_sweep = now + (sweep_every if self.busy else idle_sweep_every)
            started, next_due = await self.claim_and_send(nursery, now)
            if started or (next_due is not None and next_due <= now + sweep_every):
                # Rows `sending`, or messages due that wait for an instance: sweep (and refresh
                # the figures /healthz shows) at the short cadence again.
                self.busy = True
                self.next_sweep = min(self.next_sweep, now + sweep_every)
            if started:
                return True, None
            return False, next_due
        except (psycopg.Error, PoolTimeout) as exc:
            self.errors.error(f"{self.label}: database unavailable, retrying",
                              extra={"error": type(exc).__name__})
            await trio.sleep(1.0)
            return True, None

    def idle_wait(self, now: float, busy_wait: float) -> float:
        """How long to sleep with nothing due: `busy_wait` while work is in sight, else until the
        next (slow) sweep; a poke ends it sooner."""
        return busy_wait if self.busy else max(self.next_sweep - now, 0.001)
