"""One send to Evolution and its recorded outcome, the same for both services' senders.

The row's outcome and the anti-ban engine's release of the instance commit in one transaction,
retried until the database takes it: until then the row stays `sending` (and turns `uncertain`
if this process dies), never pending again, so nothing is sent twice.

    sent                 -> sent (the id is recorded; a held ack is applied, see store.py)
    ambiguous (timeout)  -> uncertain, never resent (an ack for it may resolve it later)
    exists: false        -> invalid (the engine remembers the number)
    rejected (4xx)       -> failed
    anything else        -> pending again after a short delay (another instance may take it)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import trio
from psycopg_pool import PoolTimeout

from oraclewad.services.outbox.store import Outbox

RETRY_RECORD = 1.0


@dataclass(frozen=True, kw_only=True)
class Recorder:
    outbox: Outbox
    db: Callable[..., Any]
    engine: Any                                 # the anti-ban engine: release() frees the instance
    clock: Callable[[], float]
    log: Any
    errors: Any
    observe: Callable[[str, float], None]       # ("sent" or the failure kind, seconds sendText took)

    async def send(self, client: Any, row_id: int, instance: str, phone: str, body: str, lease: Any,
                   extra: dict[str, Any]) -> None:
        """Send one claimed row through `lease`'s instance and record what happened. `extra`: what
        the log lines name the row by."""
        from oraclewad.services.evolution import EvolutionError, FailureKind

        started = time.perf_counter()
        error: EvolutionError | None = None
        sent = None
        try:
            sent = await client.send_text(instance, phone, body, delay_ms=int(getattr(lease, "delay_ms", 0)))
        except EvolutionError as exc:
            error = exc
        elapsed = time.perf_counter() - started
        now = self.clock()
        extra = {**extra, "instance": instance}
        o = self.outbox
        if sent is not None:
            await self._record(now, lease, None, sent.message_id, o.record_sent,
                               row_id, instance, sent.message_id, now, elapsed * 1000)
            self.observe("sent", elapsed)
            self.log.info("message sent", extra={**extra, "send_ms": round(elapsed * 1000, 1)})
            return
        assert error is not None
        kind = error.kind
        self.observe(str(kind), elapsed)
        if kind == FailureKind.AMBIGUOUS:
            await self._record(now, lease, error, None, o.set_status,
                               row_id, "uncertain", f"outcome unknown: {error}", now)
            self.errors.warning("send outcome unknown: uncertain, not resent",
                                extra={**extra, "error": str(error)})
        elif kind == FailureKind.NOT_ON_WHATSAPP:
            await self._record(now, lease, error, None, o.set_status,
                               row_id, "invalid", "the number is not on WhatsApp", now)
        elif kind == FailureKind.REJECTED:
            await self._record(now, lease, error, None, o.set_status,
                               row_id, "failed", f"Evolution refused it: {error}", now)
            self.errors.error("send rejected", extra={**extra, "error": str(error)})
        else:
            # Connection closed (another instance will take it), unauthorized, 5xx: try again later.
            delay = {FailureKind.CONNECTION_CLOSED: 1.0, FailureKind.UNAUTHORIZED: 60.0}.get(kind, 5.0)
            await self._record(now, lease, error, None, o.postpone,
                               row_id, now + delay, f"retrying: {error}", now)
            log = self.errors.error if kind == FailureKind.UNAUTHORIZED else self.errors.warning
            log("send failed, will retry", extra={**extra, "kind": str(kind), "error": str(error)})

    def _outcome(self, conn: psycopg.Connection, now: float, lease: Any, error: Any, message_id: str | None,
                 fn: Callable[..., Any], *args: Any) -> None:
        with conn.transaction():
            fn(conn, *args)
            self.engine.release(conn, lease, error, now, message_id)

    async def _record(self, *args: Any) -> None:
        while True:
            try:
                with trio.CancelScope(shield=True):
                    await self.db(self._outcome, *args)
                return
            except (psycopg.Error, PoolTimeout) as exc:
                self.errors.error("cannot record a send outcome yet, retrying",
                                  extra={"error": type(exc).__name__})
                await trio.sleep(RETRY_RECORD)
