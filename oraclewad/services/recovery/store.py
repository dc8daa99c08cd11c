"""The recovery service's PostgreSQL work: one function per transaction, each taking a connection.

Times are passed in (the service's clock), never taken from now(), so tests can run sequences
on a mock clock and the database agrees with the sender about what is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from oraclewad.services.phones import normalise
from oraclewad.services.recovery.payload import OrderEvent
from oraclewad.templating import TemplateSet, brl, parse_set, pt_br_datetime

# messages.update status -> our status, and the order in which they may replace each other.
ACK_STATUS = {"SERVER_ACK": "sent", "DELIVERY_ACK": "delivered", "READ": "read", "PLAYED": "read",
              "ERROR": "failed"}
RANK = {"pending": 0, "sending": 1, "uncertain": 1, "sent": 2, "delivered": 3, "read": 4, "failed": 2}


def ts(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


@dataclass(frozen=True)
class Plan:
    """The parsed recovery plan with its template sets ready to render."""

    raw: dict[str, Any]
    steps: tuple[tuple[float, float, TemplateSet], ...]   # (after, max_age, templates)
    thank_you: TemplateSet

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Plan:
        steps = tuple((s["after"], s["max_age"], parse_set(s["templates"], f"steps[{i}].templates"))
                      for i, s in enumerate(raw["steps"]))
        return cls(raw, steps, parse_set(raw["thank_you"]["templates"], "thank_you.templates"))


@dataclass(frozen=True)
class Ingested:
    duplicate: bool
    event_id: int | None = None
    messages: int = 0
    cancelled: int = 0
    recovered: bool = False


def _variables(ev: OrderEvent, zone: str) -> dict[str, str]:
    return {
        "name": ev.customer_name, "first_name": ev.customer_name.split()[0],
        "product": ev.product, "total": brl(ev.total), "pix_code": ev.pix_code or "",
        "expires_at": pt_br_datetime(ev.expires_at, zone) if ev.expires_at else "",
        "order_id": ev.order_id, "quantity": str(ev.quantity or 1),
    }


def ingest(conn: psycopg.Connection, ev: OrderEvent, delivery_id: str | None, scheme: str, plan: Plan,
           now: float) -> Ingested:
    """Persist one order event and everything it causes, in one transaction: the 2xx is only sent
    after this commits, and a duplicate (delivery id or (order, event) seen) changes nothing."""
    at = ts(now)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO webhook_events (received_at, event_kind, order_id, payload, delivery_id, scheme,"
            " status) VALUES (%s, %s, %s, %s::jsonb, %s, %s, 'processed')"
            " ON CONFLICT DO NOTHING RETURNING id",
            (at, ev.kind, ev.order_id, ev.payload, delivery_id, scheme)).fetchone()
        if row is None:
            return Ingested(duplicate=True)
        event_id = row[0]
        phone = normalise(ev.phone_raw)
        expired = at if ev.kind == "order_expired" else None
        paid = at if ev.kind == "order_paid" else None
        order = conn.execute(
            "INSERT INTO orders (order_id, customer_name, phone_raw, phone, product, total, pix_code,"
            " expires_at, expired_at, paid_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (order_id) DO UPDATE SET customer_name = EXCLUDED.customer_name,"
            " phone_raw = EXCLUDED.phone_raw, phone = EXCLUDED.phone, product = EXCLUDED.product,"
            " total = EXCLUDED.total, pix_code = COALESCE(EXCLUDED.pix_code, orders.pix_code),"
            " expires_at = COALESCE(EXCLUDED.expires_at, orders.expires_at),"
            " expired_at = COALESCE(orders.expired_at, EXCLUDED.expired_at),"
            " paid_at = COALESCE(orders.paid_at, EXCLUDED.paid_at), updated_at = EXCLUDED.updated_at"
            " RETURNING paid_at, reminded_at",
            (ev.order_id, ev.customer_name, ev.phone_raw, phone, ev.product, ev.total, ev.pix_code,
             ev.expires_at, expired, paid, at)).fetchone()
        assert order is not None
        variables = _variables(ev, plan.raw["time_zone"])
        rows: list[tuple[Any, ...]] = []
        cancelled = 0
        recovered = False
        if ev.kind == "order_expired":
            if order[0] is None or order[0] == paid:  # already paid (events out of order): no reminder
                for i, (after, max_age, templates) in enumerate(plan.steps, start=1):
                    due = now + after
                    rows.append((event_id, f"reminder_{i}", i, templates, due, due + max_age))
        else:
            cancelled = conn.execute(
                "UPDATE outbound_messages SET status = 'cancelled', reason = 'order paid', status_at = %s"
                " WHERE order_id = %s AND step > 0 AND status = 'pending'", (at, ev.order_id)).rowcount
            recovered = order[1] is not None
            if recovered:
                conn.execute("UPDATE orders SET recovered = true WHERE order_id = %s", (ev.order_id,))
            rows.append((event_id, "thank_you", 0, plan.thank_you, now, now + plan.steps[0][1]))
        for event, kind, step, templates, due, expires in rows:
            body = templates.render(variables, seed=f"{ev.order_id}:{kind}")
            status, reason = ("pending", None) if phone else (
                "invalid", f"impossible phone number {ev.phone_raw!r}")
            conn.execute(
                "INSERT INTO outbound_messages (webhook_event_id, kind, phone, body, status, send_after,"
                " order_id, step, due_at, expires_at, reason, status_at, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (event, kind, phone or ev.phone_raw, body, status, ts(due), ev.order_id, step, ts(due),
                 ts(expires), reason, at, at))
        return Ingested(False, event_id, len(rows), cancelled, recovered)


# ---- sender side -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    id: int
    phone: str
    body: str
    step: int
    instance: str
    kind: str


@dataclass(frozen=True)
class Due:
    id: int
    phone: str
    body: str
    step: int
    kind: str
    expires_at: datetime | None


def due_messages(conn: psycopg.Connection, now: float, limit: int) -> list[Due]:
    """Lock up to `limit` due pending rows (SKIP LOCKED: another process's rows are skipped).
    The caller decides per row within the same transaction (claim, drop, postpone)."""
    rows = conn.execute(
        "SELECT id, phone, body, step, kind, expires_at FROM outbound_messages"
        " WHERE status = 'pending' AND send_after <= %s ORDER BY send_after, id LIMIT %s"
        " FOR UPDATE SKIP LOCKED", (ts(now), limit)).fetchall()
    return [Due(*r) for r in rows]


def claim(conn: psycopg.Connection, msg: Due, instance: str, worker: str, now: float) -> Claimed:
    conn.execute("UPDATE outbound_messages SET status = 'sending', instance = %s, claimed_by = %s,"
                 " claimed_at = %s, attempts = attempts + 1, status_at = %s WHERE id = %s",
                 (instance, worker, ts(now), ts(now), msg.id))
    return Claimed(msg.id, msg.phone, msg.body, msg.step, instance, msg.kind)


def set_status(conn: psycopg.Connection, message_id: int, status: str, reason: str | None,
               now: float) -> None:
    # Only from pending (claim) or sending (outcome): a messages.update that overtook the sender's
    # answer (the row is already sent/delivered) must not be undone by a late "uncertain".
    conn.execute("UPDATE outbound_messages SET status = %s, reason = %s, status_at = %s"
                 " WHERE id = %s AND status IN ('pending', 'sending')",
                 (status, reason, ts(now), message_id))


def postpone(conn: psycopg.Connection, message_id: int, until: float, reason: str | None, now: float,
             from_status: str = "pending") -> None:
    conn.execute("UPDATE outbound_messages SET status = 'pending', send_after = %s, reason = %s,"
                 " status_at = %s WHERE id = %s AND status = %s",
                 (ts(until), reason, ts(now), message_id, from_status))


def record_sent(conn: psycopg.Connection, msg: Claimed, provider_id: str, send_ms: float, now: float) -> None:
    # A messages.update may have overtaken this answer and already moved the row past 'sent'.
    conn.execute(
        "UPDATE outbound_messages SET provider_message_id = COALESCE(provider_message_id, %s),"
        " status = CASE WHEN status IN ('sending', 'uncertain') THEN 'sent' ELSE status END,"
        " sent_at = %s, send_ms = %s, status_at = %s, reason = NULL WHERE id = %s",
        (provider_id, ts(now), send_ms, ts(now), msg.id))
    if msg.step > 0:
        _mark_reminded(conn, msg.id, now)


def _mark_reminded(conn: psycopg.Connection, message_id: int, now: float) -> None:
    conn.execute("UPDATE orders SET reminded_at = COALESCE(reminded_at, %s) FROM outbound_messages m"
                 " WHERE m.id = %s AND m.order_id = orders.order_id", (ts(now), message_id))


def sweep_stale(conn: psycopg.Connection, older_than: float, now: float) -> int:
    """'sending' rows whose process never recorded an outcome become 'uncertain' (never resent)."""
    return conn.execute(
        "UPDATE outbound_messages SET status = 'uncertain', status_at = %s,"
        " reason = 'outcome unknown: the sender stopped before recording Evolution''s answer'"
        " WHERE status = 'sending' AND claimed_at < %s", (ts(now), ts(older_than))).rowcount


def next_due(conn: psycopg.Connection) -> float | None:
    row = conn.execute("SELECT min(send_after) FROM outbound_messages WHERE status = 'pending'").fetchone()
    return row[0].timestamp() if row and row[0] else None


def sent_today(conn: psycopg.Connection, since: float) -> dict[str, int]:
    rows = conn.execute("SELECT instance, count(*) FROM outbound_messages WHERE instance IS NOT NULL"
                        " AND claimed_at >= %s GROUP BY instance", (ts(since),)).fetchall()
    return {name: n for name, n in rows}


def last_sends(conn: psycopg.Connection) -> dict[str, float]:
    rows = conn.execute("SELECT instance, max(claimed_at) FROM outbound_messages WHERE instance IS NOT NULL"
                        " GROUP BY instance").fetchall()
    return {name: at.timestamp() for name, at in rows if at}


# ---- Evolution events ------------------------------------------------------------------------

def apply_ack(conn: psycopg.Connection, instance: str, key_id: str, phone: str | None, status: str,
              now: float) -> str | None:
    """messages.update: move our message forward (never back); an `uncertain` (or still `sending`)
    message to that phone on that instance without a known id takes this id. Returns the new status."""
    new = ACK_STATUS.get(status)
    if new is None:
        return None
    allowed = [s for s, r in RANK.items() if r < RANK[new] and s != "failed"] if new != "failed" else [
        "sending", "uncertain", "sent"]
    row = conn.execute(
        "UPDATE outbound_messages SET status = %s, status_at = %s WHERE provider_message_id = %s"
        " AND status = ANY(%s) RETURNING id, step", (new, ts(now), key_id, allowed)).fetchone()
    if row is None and phone:
        if is_our_message(conn, key_id):
            return None
        row = conn.execute(
            "UPDATE outbound_messages SET status = %s, status_at = %s, provider_message_id = %s,"
            " reason = CASE WHEN status = 'uncertain' THEN 'resolved by messages.update' ELSE reason END"
            " WHERE id = (SELECT id FROM outbound_messages WHERE instance = %s AND phone = %s"
            " AND provider_message_id IS NULL AND status IN ('uncertain', 'sending')"
            " ORDER BY claimed_at DESC LIMIT 1) RETURNING id, step",
            (new, ts(now), key_id, instance, phone)).fetchone()
    if row is None:
        return None
    if row[1] > 0 and new != "failed":
        _mark_reminded(conn, row[0], now)
    return new


def record_manual(conn: psycopg.Connection, message_id: str, instance: str, jid: str, now: float) -> bool:
    return conn.execute("INSERT INTO manual_messages (message_id, instance, remote_jid, at)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (message_id, instance, jid, ts(now))).rowcount == 1


def is_our_message(conn: psycopg.Connection, key_id: str) -> bool:
    return conn.execute("SELECT 1 FROM outbound_messages WHERE provider_message_id = %s",
                        (key_id,)).fetchone() is not None


def record_opt_out(conn: psycopg.Connection, phone: str, instance: str, word: str, now: float) -> None:
    conn.execute("INSERT INTO opt_outs (phone, instance, word, at) VALUES (%s, %s, %s, %s)"
                 " ON CONFLICT DO NOTHING", (phone, instance, word, ts(now)))


# ---- report ----------------------------------------------------------------------------------

def report(conn: psycopg.Connection, since: float) -> dict[str, Any]:
    at = ts(since)
    o = conn.execute(
        "SELECT count(*) FILTER (WHERE expired_at >= %(s)s),"
        " count(*) FILTER (WHERE expired_at >= %(s)s AND reminded_at IS NOT NULL),"
        " count(*) FILTER (WHERE paid_at >= %(s)s AND recovered),"
        " COALESCE(sum(total) FILTER (WHERE paid_at >= %(s)s AND recovered), 0),"
        " count(*) FILTER (WHERE updated_at >= %(s)s AND phone IS NULL)"
        " FROM orders", {"s": at}).fetchone()
    assert o is not None
    expired, reminded, recovered, revenue, invalid = o
    by_status = dict(conn.execute(
        "SELECT status, count(*) FROM outbound_messages WHERE created_at >= %s GROUP BY status",
        (at,)).fetchall())
    opt_outs = conn.execute("SELECT count(*) FROM opt_outs WHERE at >= %s", (at,)).fetchone()
    return {
        "since": at.isoformat(), "orders_expired": expired, "orders_reminded": reminded,
        "orders_recovered": recovered, "revenue_recovered": str(revenue),
        "conversion": round(recovered / reminded, 4) if reminded else 0.0,
        "messages": by_status, "uncertain": by_status.get("uncertain", 0),
        "invalid_numbers": invalid, "opt_outs": opt_outs[0] if opt_outs else 0,
    }


