"""What a sending service does with Evolution's events for its instances (POST /webhooks/evolution).

The route itself (JWT check, instance ownership, connection.update -> instance states) is
services/instances.py's `events_route`; this is the `on_event` it calls:

- messages.update: our message moves to sent/delivered/read (never backwards); an update for an
  id we do not know yet is held until the send's answer brings it, or resolves an `uncertain`
  message to that number on that instance once no send in flight can own it (Outbox.apply_ack).
- messages.upsert, inbound: a message that is only an opt-out word (SAIR, PARAR, STOP, CANCELAR,
  DESCADASTRAR) puts the phone on the tenant's suppression list, matched on the phone JID even
  when the event is LID-addressed.
- messages.upsert, fromMe, not sent by us: a manual message, counted by the anti-ban engine (and
  handed to the service's `manual`, recovery's record of them).
- connection.update: wakes the sender (an instance may be open again, or gone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException

from oraclewad.services.outbox.store import Outbox, record_opt_out
from oraclewad.services.phones import jid_phone
from oraclewad.services.suppression import SuppressionList, message_text, opt_out_word

# manual(conn, key_id, instance, remote_jid, now) -> whether it was new
Manual = Callable[[psycopg.Connection, str, str, str, float], bool]
EVENTS = ("messages.update", "messages.upsert", "connection.update")


class EvolutionEvents:
    def __init__(self, *, outbox: Outbox, db: Callable[..., Any], suppression: SuppressionList,
                 counter: Any, engine: Any, manual: Manual | None, clock: Callable[[], float],
                 poke: Callable[[], None], log: Any) -> None:
        self.outbox = outbox
        self.db = db
        self.suppression = suppression
        self.counter = counter        # a prometheus Counter labelled (event, result)
        self.engine = engine          # the anti-ban engine, None without instances
        self.manual = manual
        self.clock = clock
        self.poke = poke
        self.log = log

    async def __call__(self, event: dict[str, Any]) -> None:
        name = str(event.get("event") or "").lower().replace("_", ".")
        instance = str(event.get("instance") or "")
        data = event.get("data")
        if not isinstance(data, dict):
            return
        label = name if name in EVENTS else "other"
        try:
            result = await self._handle(name, instance, data)
        except (psycopg.Error, PoolTimeout):
            self.counter.labels(label, "unavailable").inc()
            # Evolution retries a 5xx: nothing is lost while the database is away.
            raise HTTPException(503, "the database is unavailable; retry later",
                                headers={"Retry-After": "5"}) from None
        self.counter.labels(label, result).inc()

    async def _handle(self, name: str, instance: str, data: dict[str, Any]) -> str:
        now = self.clock()
        if name == "messages.update":
            key_id = data.get("keyId") or data.get("id")
            status = data.get("status")
            if not isinstance(key_id, str) or not isinstance(status, str):
                return "ignored"
            phone = jid_phone(data.get("remoteJid"), data.get("remoteJidAlt"))
            return await self.db(self.outbox.apply_ack, instance, key_id, phone, status, now)
        if name == "messages.upsert":
            key = data.get("key") if isinstance(data.get("key"), dict) else {}
            remote, alt = key.get("remoteJid"), key.get("remoteJidAlt")
            if key.get("fromMe"):
                key_id = key.get("id")
                if not isinstance(key_id, str) or not isinstance(remote, str):
                    return "ignored"
                return "manual" if await self.db(self._manual, key_id, instance, remote, now) else "ours"
            word = opt_out_word(message_text(data.get("message")))
            phone = jid_phone(remote, alt)
            if word is None or phone is None:
                return "ignored"
            await self.suppression.add(phone, instance, word, now)
            await self.db(record_opt_out, phone, instance, word, now)
            self.log.info("opt-out", extra={"instance": instance, "word": word})
            return "opt_out"
        if name == "connection.update":
            self.poke()
            return "applied"
        return "ignored"

    def _manual(self, conn: psycopg.Connection, key_id: str, instance: str, remote: str, now: float) -> bool:
        """A fromMe upsert is manual unless it is one of ours (API sends normally never come back)."""
        if self.outbox.is_ours(conn, key_id):
            return False
        if self.engine is not None:
            self.engine.note_upsert(conn, instance, key_id, True, now)
        return self.manual is None or self.manual(conn, key_id, instance, remote, now)
