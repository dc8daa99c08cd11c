"""What broadcast does with Evolution's events for its instances (POST /webhooks/evolution).

The route (JWT check, instance ownership, connection.update -> instance states) is
services/instances.py's `events_route`; this is its `on_event`:

- messages.update: a recipient's message moves to sent/delivered/read (never backwards); an
  `uncertain` one is resolved by the first update for its number on that instance.
- messages.upsert, inbound: an opt-out word (SAIR, PARAR, STOP, ...) puts the phone on the
  tenant's suppression list (the phone JID, also when the event is LID-addressed): no broadcast
  reaches it again, the pending messages of running campaigns included (checked at send time).
- messages.upsert, fromMe: the anti-ban engine counts manual messages.
- connection.update: wakes the sender (an instance may be open again, or gone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException

from oraclewad.services.broadcast import store
from oraclewad.services.broadcast.metrics import BroadcastMetrics
from oraclewad.services.phones import jid_phone
from oraclewad.services.suppression import SuppressionList, message_text, opt_out_word


class EvolutionEvents:
    def __init__(self, *, db: Callable[..., Any], suppression: SuppressionList, metrics: BroadcastMetrics,
                 engine: Any, clock: Callable[[], float], poke: Callable[[], None], log: Any) -> None:
        self.db = db
        self.suppression = suppression
        self.metrics = metrics
        self.engine = engine
        self.clock = clock
        self.poke = poke
        self.log = log

    async def __call__(self, event: dict[str, Any]) -> None:
        name = str(event.get("event") or "").lower().replace("_", ".")
        instance = str(event.get("instance") or "")
        data = event.get("data")
        if not isinstance(data, dict):
            return
        label = name if name in ("messages.update", "messages.upsert", "connection.update") else "other"
        try:
            result = await self._handle(name, instance, data)
        except (psycopg.Error, PoolTimeout):
            self.metrics.evolution_events.labels(label, "unavailable").inc()
            # Evolution retries a 5xx: nothing is lost while the database is away.
            raise HTTPException(503, "the database is unavailable; retry later",
                                headers={"Retry-After": "5"}) from None
        self.metrics.evolution_events.labels(label, result).inc()

    async def _handle(self, name: str, instance: str, data: dict[str, Any]) -> str:
        now = self.clock()
        if name == "messages.update":
            key_id = data.get("keyId") or data.get("id")
            status = data.get("status")
            if not isinstance(key_id, str) or not isinstance(status, str):
                return "ignored"
            phone = jid_phone(data.get("remoteJid"), data.get("remoteJidAlt"))
            new = await self.db(store.apply_ack, instance, key_id, phone, status, now)
            return "applied" if new else "ignored"
        if name == "messages.upsert":
            key = data.get("key") if isinstance(data.get("key"), dict) else {}
            if key.get("fromMe"):
                key_id = key.get("id")
                if not isinstance(key_id, str):
                    return "ignored"
                if await self.db(store.is_our_message, key_id):
                    return "ours"
                note = getattr(self.engine, "note_upsert", None)
                if note is not None:
                    await self.db(note, instance, key_id, True, now)
                return "manual"
            word = opt_out_word(message_text(data.get("message")))
            phone = jid_phone(key.get("remoteJid"), key.get("remoteJidAlt"))
            if word is None or phone is None:
                return "ignored"
            await self.suppression.add(phone, instance, word, now)
            await self.db(store.record_opt_out, phone, instance, word, now)
            self.log.info("opt-out", extra={"instance": instance, "word": word})
            return "opt_out"
        if name == "connection.update":
            self.poke()
            return "applied"
        return "ignored"
