"""The tenant's suppression (opt-out) list, shared by its recovery and broadcast services.

It lives in the tenant's shared database (`<tenant>_shared`, made by provisioning), in one table
both service roles may SELECT and INSERT and nothing else: an opt-out received on any instance
of either service stops the other's messages too, at once and durably (a Redis flush cannot
lose it). The child config carries `shared.dsn` (the service's own role, that database).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import trio

from oraclewad.services.pools import OpenOnUse

OPT_OUT_WORDS = frozenset({"SAIR", "PARAR", "STOP", "CANCELAR", "DESCADASTRAR"})
_NOT_LETTERS = re.compile(r"[^A-Z ]+")


def opt_out_word(text: str | None) -> str | None:
    """The opt-out word when the whole message is one (case, accents, punctuation ignored):
    'Sair!', 'párar', ' STOP. ' opt out; 'não quero sair agora' does not (a human reads those)."""
    if not text or len(text) > 200:
        return None
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = _NOT_LETTERS.sub(" ", plain.upper()).split()
    if len(words) == 1 and words[0] in OPT_OUT_WORDS:
        return words[0]
    return None


def message_text(message: Any) -> str | None:
    """The text of a Baileys message object (conversation, extended text, captions)."""
    if not isinstance(message, dict):
        return None
    for path in (("conversation",), ("extendedTextMessage", "text"), ("imageMessage", "caption"),
                 ("videoMessage", "caption"), ("buttonsResponseMessage", "selectedDisplayText"),
                 ("listResponseMessage", "title")):
        value: Any = message
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
    return None


class SuppressionList:
    def __init__(self, dsn: str | None, service: str, limiter: trio.CapacityLimiter | None = None) -> None:
        self.service = service
        # Its threads start at its first use (pools.py): not before READY=1.
        self.pool = (OpenOnUse(dsn, min_size=0, max_size=2, timeout=5.0, name=f"shared-{service}")
                     if dsn else None)
        self.limiter = limiter or trio.CapacityLimiter(2)

    @property
    def enabled(self) -> bool:
        return self.pool is not None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def contains_sync(self, phones: Iterable[str]) -> set[str]:
        wanted = list(set(phones))
        if self.pool is None or not wanted:
            return set()
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT phone FROM suppressions WHERE phone = ANY(%s)", (wanted,)).fetchall()
        return {r[0] for r in rows}

    def add_sync(self, phone: str, instance: str, word: str, now: float) -> bool:
        if self.pool is None:
            return False
        with self.pool.connection() as conn:
            return conn.execute(
                "INSERT INTO suppressions (phone, service, instance, word, added_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", (phone, self.service, instance, word,
                                            datetime.fromtimestamp(now, tz=UTC))).rowcount == 1

    async def add(self, phone: str, instance: str, word: str, now: float) -> bool:
        return await trio.to_thread.run_sync(self.add_sync, phone, instance, word, now, limiter=self.limiter)

    async def contains(self, phones: Iterable[str]) -> set[str]:
        return await trio.to_thread.run_sync(self.contains_sync, list(phones), limiter=self.limiter)



def opt_out_handler(suppression: SuppressionList, *,
                    clock: Callable[[], float] = time.time) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """An `on_event` for services/instances.events_route that only records opt-outs (broadcast's)."""
    from oraclewad.services.phones import jid_phone

    async def on_event(event: dict[str, Any]) -> None:
        data = event.get("data")
        name = str(event.get("event") or "").lower().replace("_", ".")
        if name != "messages.upsert" or not isinstance(data, dict):
            return
        key = data.get("key") if isinstance(data.get("key"), dict) else {}
        word = opt_out_word(message_text(data.get("message")))
        phone = jid_phone(key.get("remoteJid"), key.get("remoteJidAlt"))
        if not key.get("fromMe") and word and phone:
            await suppression.add(phone, str(event.get("instance") or ""), word, clock())

    return on_event
