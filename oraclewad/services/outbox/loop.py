"""The claim round both senders repeat: sweep when due, claim and start sends, else learn when the
next message is due. Each sender keeps its own sleep between rounds (their wake-ups differ)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import trio
from psycopg_pool import PoolTimeout


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
