"""The SQL of an outbox row's life after its claim, the same for recovery's `outbound_messages` and
broadcast's `recipients`: outcomes, the sweep to `uncertain`, and matching Evolution's acks.

Evolution posts a send's SERVER_ACK before it answers sendText (the answer carries the id), so an
ack often names an id no row holds yet. Guessing its row by phone pins it on the wrong message
(the same number in two campaigns or orders, or a row whose sender died before its send left,
which would then count as sent). So an ack for an unknown id waits in `held_acks` while a send to
that number on that instance is in flight, and `record_sent` applies it once the answer brings the
id; an unknown id resolves only an `uncertain` row, and only one claimed before the ack came. A
per-instance advisory lock orders `record_sent` against `apply_ack`: an ack sees a row either
with its id or still in flight.

Times are passed in (the service's clock), never taken from now().
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

# messages.update status -> our status, and the order in which they may replace each other.
ACK_STATUS = {"SERVER_ACK": "sent", "DELIVERY_ACK": "delivered", "READ": "read", "PLAYED": "read",
              "ERROR": "failed"}
RANK = {"pending": 0, "sending": 1, "uncertain": 1, "sent": 2, "delivered": 3, "read": 4, "failed": 2}
# Which of two statuses a held ack keeps (the furthest along).
HELD_ORDER = ["sent", "delivered", "read", "failed"]
HELD_KEEP = 3600.0  # seconds an ack nobody claimed is kept (a message typed on the phone, say)
STALE_REASON = "outcome unknown: the sender stopped before recording Evolution's answer"


def ts(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


def allowed_before(new: str) -> list[str]:
    """The statuses a row may move to `new` from (forward only; a failure after a send counts)."""
    if new == "failed":
        return ["sending", "uncertain", "sent"]
    return [s for s, r in RANK.items() if r < RANK[new] and s != "failed"]


Hook = Callable[[psycopg.Connection, int, float], None]


@dataclass(frozen=True)
class Outbox:
    """One service's outbox table. `also_ours`: other tables whose `provider_message_id` holds ids
    we sent (broadcast's test messages); `on_sent(conn, row_id, now)` runs when a row reaches sent
    or beyond (recovery marks the order reminded)."""

    table: str
    lock_prefix: str                 # per-instance advisory lock namespace (kept across releases)
    also_ours: tuple[str, ...] = ()
    on_sent: Hook | None = None
    send_ms: bool = False            # the table keeps how long sendText took

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(t=sql.Identifier(self.table))

    # ---- outcomes -----------------------------------------------------------------------------

    def set_status(self, conn: psycopg.Connection, row_id: int, status: str, reason: str | None,
                   now: float) -> None:
        # Only from pending (claim) or sending (outcome): a messages.update that overtook the
        # sender's answer (the row is already sent/delivered) must not be undone by a late "uncertain".
        conn.execute(self._q("UPDATE {t} SET status = %s, reason = %s, status_at = %s"
                             " WHERE id = %s AND status IN ('pending', 'sending')"),
                     (status, reason, ts(now), row_id))

    def postpone(self, conn: psycopg.Connection, row_id: int, until: float, reason: str | None, now: float,
                 from_status: str = "sending") -> None:
        conn.execute(self._q("UPDATE {t} SET status = 'pending', send_after = %s, reason = %s,"
                             " status_at = %s WHERE id = %s AND status = %s"),
                     (ts(until), reason, ts(now), row_id, from_status))

    def record_sent(self, conn: psycopg.Connection, row_id: int, instance: str, provider_id: str,
                    now: float, send_ms: float | None = None) -> None:
        """The send's answer: the row takes its id. An ack that overtook the answer waits in
        held_acks and is applied here, under the instance's lock."""
        self.lock_instance(conn, instance)
        conn.execute(self._q(
            "UPDATE {t} SET provider_message_id = COALESCE(provider_message_id, %s),"
            " status = CASE WHEN status IN ('sending', 'uncertain') THEN 'sent' ELSE status END,"
            " sent_at = %s, status_at = %s, reason = NULL" + (", send_ms = %s" if self.send_ms else "")
            + " WHERE id = %s"),
            (provider_id, ts(now), ts(now), *((send_ms,) if self.send_ms else ()), row_id))
        if self.on_sent is not None:
            self.on_sent(conn, row_id, now)
        held = conn.execute("DELETE FROM held_acks WHERE provider_message_id = %s RETURNING status",
                            (provider_id,)).fetchone()
        if held is not None:
            self._advance(conn, provider_id, held[0], now)

    def sweep_stale(self, conn: psycopg.Connection, older_than: float, now: float) -> int:
        """'sending' rows whose process never recorded an outcome become 'uncertain' (never resent)."""
        return conn.execute(self._q("UPDATE {t} SET status = 'uncertain', status_at = %s, reason = %s"
                                    " WHERE status = 'sending' AND claimed_at < %s"),
                            (ts(now), STALE_REASON, ts(older_than))).rowcount

    def sweep_work(self, conn: psycopg.Connection, settled_before: float) -> tuple[bool, bool, bool]:
        """(rows `sending`, held acks, held acks since `settled_before`) in one statement: an idle
        sweep skips what has nothing to work on. settle_held runs while any ack is held, so one
        older than `settled_before` is tried against the uncertain rows by the first sweep that
        finds it so; only the younger ones need the sweep's short cadence."""
        row = conn.execute(self._q(
            "SELECT EXISTS (SELECT 1 FROM {t} WHERE status = 'sending'),"
            " EXISTS (SELECT 1 FROM held_acks), EXISTS (SELECT 1 FROM held_acks WHERE received_at >= %s)"),
            (ts(settled_before),)).fetchone()
        return (bool(row[0]), bool(row[1]), bool(row[2])) if row else (False, False, False)

    def sweep(self, conn: psycopg.Connection, cutoff: float, now: float) -> tuple[int, int, bool]:
        """A sender's sweep of its outbox: (rows turned uncertain, uncertain rows resolved by held
        acks, work in sight: rows `sending` or acks held since `cutoff`). Each step runs only when
        sweep_work found something for it, so an idle sweep is one statement."""
        sending, held, recent = self.sweep_work(conn, cutoff)
        stale = self.sweep_stale(conn, cutoff, now) if sending else 0
        # After the sweep: an ack held since before the cut-off can no longer be an in-flight send's.
        resolved = self.settle_held(conn, cutoff, now) if held else 0
        return stale, resolved, sending or recent

    # ---- Evolution's acks --------------------------------------------------------------------

    def lock_instance(self, conn: psycopg.Connection, instance: str) -> None:
        """Serialise, per instance, what gives a row its Evolution id (record_sent) with what looks a
        row up by an id (apply_ack, settle_held)."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.lock_prefix + instance,))

    def is_ours(self, conn: psycopg.Connection, key_id: str) -> bool:
        for table in (self.table, *self.also_ours):
            if conn.execute(sql.SQL("SELECT 1 FROM {} WHERE provider_message_id = %s").format(
                    sql.Identifier(table)), (key_id,)).fetchone() is not None:
                return True
        return False

    def apply_ack(self, conn: psycopg.Connection, instance: str, key_id: str, phone: str | None,
                  status: str, now: float) -> str:
        """messages.update: move our message forward (never back). Returns `applied`, `held` (an id
        no row holds yet, kept for the send answer that will bring it) or `ignored`.

        An id we do not know resolves an `uncertain` message to that number on that instance only
        when no send to it is in flight there: while one is, the ack may be that send's."""
        new = ACK_STATUS.get(status)
        if new is None:
            return "ignored"
        with conn.transaction():
            self.lock_instance(conn, instance)
            if self._advance(conn, key_id, new, now):
                return "applied"
            if self.is_ours(conn, key_id):
                return "ignored"    # ours and already at or past this status
            if phone is not None and not self._in_flight(conn, instance, phone) \
                    and self._resolve_uncertain(conn, instance, phone, key_id, new, now, now):
                return "applied"
            self._hold(conn, key_id, instance, phone, new, now)
            return "held"

    def settle_held(self, conn: psycopg.Connection, settled_before: float, now: float) -> int:
        """Held acks whose id a row has taken since are applied; those older than `settled_before`
        (every send in flight when they came has recorded its answer or turned uncertain since) may
        resolve an `uncertain` row; the rest are forgotten after HELD_KEEP. Returns rows resolved."""
        resolved = 0
        with conn.transaction():
            for key_id, status in conn.execute(self._q(
                    "DELETE FROM held_acks h USING {t} m WHERE m.provider_message_id = h.provider_message_id"
                    " RETURNING h.provider_message_id, h.status")).fetchall():
                self._advance(conn, key_id, status, now)
            old = conn.execute(
                "SELECT provider_message_id, instance, phone, status, received_at FROM held_acks"
                " WHERE received_at < %s AND phone IS NOT NULL ORDER BY received_at",
                (ts(settled_before),)).fetchall()
            for key_id, instance, phone, status, received in old:
                self.lock_instance(conn, instance)
                if not self.is_ours(conn, key_id) and self._resolve_uncertain(
                        conn, instance, phone, key_id, status, received.timestamp(), now):
                    conn.execute("DELETE FROM held_acks WHERE provider_message_id = %s", (key_id,))
                    resolved += 1
            conn.execute("DELETE FROM held_acks WHERE received_at < %s", (ts(now - HELD_KEEP),))
        return resolved

    def _reached(self, conn: psycopg.Connection, row: tuple[Any, ...] | None, new: str, now: float) -> bool:
        if row is not None and new != "failed" and self.on_sent is not None:
            self.on_sent(conn, row[0], now)
        return row is not None

    def _advance(self, conn: psycopg.Connection, key_id: str, new: str, now: float) -> bool:
        """Move the row with this Evolution id forward to `new` (never back)."""
        row = conn.execute(self._q("UPDATE {t} SET status = %s, status_at = %s WHERE provider_message_id = %s"
                                   " AND status = ANY(%s) RETURNING id"),
                           (new, ts(now), key_id, allowed_before(new))).fetchone()
        return self._reached(conn, row, new, now)

    def _resolve_uncertain(self, conn: psycopg.Connection, instance: str, phone: str, key_id: str,
                           new: str, received: float, now: float) -> bool:
        """The oldest `uncertain` message to that phone on that instance claimed before the ack came
        (a message claimed later cannot be the one acked) takes the id."""
        row = conn.execute(self._q(
            "UPDATE {t} SET status = %s, status_at = %s, provider_message_id = %s,"
            " reason = 'resolved by messages.update'"
            " WHERE id = (SELECT id FROM {t} WHERE instance = %s AND phone = %s"
            " AND provider_message_id IS NULL AND status = 'uncertain' AND claimed_at <= %s"
            " ORDER BY claimed_at, id LIMIT 1) RETURNING id"),
            (new, ts(now), key_id, instance, phone, ts(received))).fetchone()
        return self._reached(conn, row, new, now)

    def _in_flight(self, conn: psycopg.Connection, instance: str, phone: str) -> bool:
        return conn.execute(self._q(
            "SELECT 1 FROM {t} WHERE instance = %s AND phone = %s AND status = 'sending'"
            " AND provider_message_id IS NULL LIMIT 1"), (instance, phone)).fetchone() is not None

    def _hold(self, conn: psycopg.Connection, key_id: str, instance: str, phone: str | None, new: str,
              now: float) -> None:
        conn.execute(
            "INSERT INTO held_acks (provider_message_id, instance, phone, status, received_at)"
            " VALUES (%(id)s, %(instance)s, %(phone)s, %(status)s, %(at)s)"
            " ON CONFLICT (provider_message_id) DO UPDATE SET status = CASE WHEN"
            " array_position(%(order)s, EXCLUDED.status) > array_position(%(order)s, held_acks.status)"
            " THEN EXCLUDED.status ELSE held_acks.status END",
            {"id": key_id, "instance": instance, "phone": phone, "status": new, "at": ts(now),
             "order": HELD_ORDER})


def record_opt_out(conn: psycopg.Connection, phone: str, instance: str, word: str, now: float) -> None:
    """The service's own record of an opt-out seen on its instances (the tenant's list is shared)."""
    conn.execute("INSERT INTO opt_outs (phone, instance, word, at) VALUES (%s, %s, %s, %s)"
                 " ON CONFLICT DO NOTHING", (phone, instance, word, ts(now)))
