"""The recovery service's PostgreSQL work: one function per transaction, each taking a connection.

Times are passed in (the service's clock), never taken from now(), so tests can run sequences
on a mock clock and the database agrees with the sender about what is due.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from oraclewad.services.outbox import Outbox, ts
from oraclewad.services.phones import normalise
from oraclewad.services.recovery.payload import OrderEvent
from oraclewad.templating import TemplateSet, brl, parse_set, pt_br_datetime


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
    first_due: float | None = None   # the earliest pending message it queued (wakes the sender)


def _variables(ev: OrderEvent, zone: str) -> dict[str, str]:
    return {
        "name": ev.customer_name, "first_name": ev.customer_name.split()[0],
        "product": ev.product, "total": brl(ev.total), "pix_code": ev.pix_code or "",
        "expires_at": pt_br_datetime(ev.expires_at, zone) if ev.expires_at else "",
        "order_id": ev.order_id, "quantity": str(ev.quantity or 1),
    }


@dataclass(frozen=True)
class Incoming:
    """One verified, validated webhook waiting to be stored."""

    event: OrderEvent
    delivery_id: str | None
    scheme: str
    now: float


def ingest(conn: psycopg.Connection, ev: OrderEvent, delivery_id: str | None, scheme: str, plan: Plan,
           now: float) -> Ingested:
    """Persist one order event and everything it causes, in one transaction: the 2xx is only sent
    after this commits, and a duplicate (delivery id or (order, event) seen) changes nothing."""
    with conn.transaction():
        prepared = _Prepared(Incoming(ev, delivery_id, scheme, now), plan)
        return prepared.result(conn.execute(_INGEST, prepared.params).fetchone())


def ingest_many(conn: psycopg.Connection, batch: list[Incoming], plan: Plan) -> list[Ingested | Exception]:
    """Group commit: the webhooks that arrived together, in one transaction (one commit, one
    flush of the WAL, instead of one each). Each result is its Ingested, or the database error
    that event alone causes: when the shared transaction fails on a value PostgreSQL refuses, it
    is rolled back and every event is stored again in its own transaction, so one bad event never
    costs the others their 2xx. Unavailable (connection lost): raised for the whole batch.

    Events of distinct orders (and delivery ids), the usual case, are one statement for the whole
    batch (_INGEST_BATCH: arrays in, a row per stored event out): per event, a statement of its
    own cost PostgreSQL about 300 us and psycopg about as much again. Two events of one order
    must see each other's effects (expired then paid), so such a batch is one statement per event
    in arrival order (pipeline mode: still one round trip).

    Stored in order-id order (arrival order within one order), so two processes' batches (during
    a release swap) take the orders' row locks in the same order and cannot deadlock."""
    prepared = [_Prepared(i, plan) for i in batch]
    try:
        if _independent(batch):
            with _own_transaction(conn):
                return _ingest_batch(conn, prepared)
        with conn.transaction():
            order = sorted(range(len(batch)), key=lambda k: batch[k].event.order_id)
            with conn.pipeline():
                cursors = {k: conn.execute(_INGEST, prepared[k].params) for k in order}
                rows = {k: c.fetchone() for k, c in cursors.items()}
            return [prepared[k].result(rows[k]) for k in range(len(batch))]
    except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError):
        if len(batch) == 1:
            raise
    out: list[Ingested | Exception] = []
    for i in batch:
        try:
            out.append(ingest(conn, i.event, i.delivery_id, i.scheme, plan, i.now))
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
            out.append(exc)
    return out


@contextmanager
def _own_transaction(conn: psycopg.Connection) -> Iterator[None]:
    """One statement as its own transaction (autocommit): PostgreSQL commits it, and flushes the
    WAL as synchronous_commit says (on for every tenant database), before the statement's answer
    comes back, so the caller's 2xx still follows the commit; one round trip instead of three
    (BEGIN, the statement, COMMIT), the per-batch cost a light load pays per webhook. Inside a
    caller's transaction (tests), part of it as before."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with conn.transaction():
            yield
        return
    if conn.autocommit:
        yield
        return
    conn.autocommit = True
    try:
        yield
    finally:
        # A connection lost meanwhile cannot switch back; the pool discards it. Never let that
        # replace the caller's error (an OperationalError is a 503, not a refused value).
        with suppress(psycopg.Error):
            conn.autocommit = False


def _independent(batch: list[Incoming]) -> bool:
    orders = {i.event.order_id for i in batch}
    deliveries = [i.delivery_id for i in batch if i.delivery_id is not None]
    return len(orders) == len(batch) and len(set(deliveries)) == len(deliveries)


_EVENT_COLUMNS = ("at", "kind", "order_id", "payload", "delivery_id", "scheme", "name", "phone_raw",
                  "phone", "product", "total", "pix", "expires_at", "expired", "paid", "message_phone",
                  "status", "reason")


def _ingest_batch(conn: psycopg.Connection, prepared: list[_Prepared]) -> list[Ingested | Exception]:
    params: dict[str, list[Any]] = {c: [p.params[c] for p in prepared] for c in _EVENT_COLUMNS}
    messages: dict[str, list[Any]] = {"m_order": [], "m_kind": [], "m_step": [], "m_body": [],
                                      "m_due": [], "m_expires": []}
    for p in prepared:
        q = p.params
        messages["m_order"] += [q["order_id"]] * len(q["kinds"])
        messages["m_kind"] += q["kinds"]
        messages["m_step"] += q["steps"]
        messages["m_body"] += q["bodies"]
        messages["m_due"] += q["dues"]
        messages["m_expires"] += q["expiries"]
    rows = {r[0]: r[1:] for r in conn.execute(_INGEST_BATCH, params | messages).fetchall()}
    return [p.result(rows.get(p.ev.order_id)) for p in prepared]


# An order row a later event updates: its latest details, its first expiry and payment, and
# recovered once paid after a reminder (the same for one event and for a batch).
_ORDER_UPSERT = """    ON CONFLICT (order_id) DO UPDATE SET customer_name = EXCLUDED.customer_name,
        phone_raw = EXCLUDED.phone_raw, phone = EXCLUDED.phone, product = EXCLUDED.product,
        total = EXCLUDED.total, pix_code = COALESCE(EXCLUDED.pix_code, orders.pix_code),
        expires_at = COALESCE(EXCLUDED.expires_at, orders.expires_at),
        expired_at = COALESCE(orders.expired_at, EXCLUDED.expired_at),
        paid_at = COALESCE(orders.paid_at, EXCLUDED.paid_at), updated_at = EXCLUDED.updated_at,
        recovered = orders.recovered OR (EXCLUDED.paid_at IS NOT NULL AND orders.reminded_at IS NOT NULL)"""

# One statement per event: the event (ON CONFLICT: a duplicate stops here, nothing else happens),
# the order, for order.paid the cancelled reminders and the recovered flag, and the messages it
# queues: the reminders unless the order is already paid (events out of order), or the thank-you.
_INGEST = f"""
WITH ev AS (
    INSERT INTO webhook_events (received_at, event_kind, order_id, payload, delivery_id, scheme, status)
    VALUES (%(at)s, %(kind)s, %(order_id)s, %(payload)s::jsonb, %(delivery_id)s, %(scheme)s, 'processed')
    ON CONFLICT DO NOTHING RETURNING id
), o AS (
    INSERT INTO orders (order_id, customer_name, phone_raw, phone, product, total, pix_code, expires_at,
                        expired_at, paid_at, updated_at)
    SELECT %(order_id)s, %(name)s, %(phone_raw)s, %(phone)s::text, %(product)s, %(total)s::numeric,
           %(pix)s::text, %(expires_at)s::timestamptz, %(expired)s::timestamptz, %(paid)s::timestamptz,
           %(at)s FROM ev
{_ORDER_UPSERT}
    RETURNING paid_at, reminded_at
), c AS (
    UPDATE outbound_messages SET status = 'cancelled', reason = 'order paid', status_at = %(at)s
    WHERE %(kind)s = 'order_paid' AND order_id = %(order_id)s AND step > 0 AND status = 'pending'
      AND EXISTS (SELECT 1 FROM ev)
    RETURNING 1
), m AS (
    INSERT INTO outbound_messages (webhook_event_id, kind, phone, body, status, send_after, order_id, step,
                                   due_at, expires_at, reason, status_at, created_at)
    SELECT ev.id, v.kind, %(message_phone)s, v.body, %(status)s, v.due, %(order_id)s, v.step, v.due,
           v.expires, %(reason)s::text, %(at)s, %(at)s
    FROM ev, o, unnest(%(kinds)s::text[], %(steps)s::int[], %(bodies)s::text[], %(dues)s::timestamptz[],
                       %(expiries)s::timestamptz[]) AS v(kind, step, body, due, expires)
    WHERE %(kind)s = 'order_paid' OR o.paid_at IS NULL
    ON CONFLICT DO NOTHING
)
SELECT ev.id, o.paid_at IS NULL, o.reminded_at IS NOT NULL, (SELECT count(*) FROM c) FROM ev, o
"""

# _INGEST for a batch of events of distinct orders and delivery ids: the same steps, each over
# all the batch's rows (arrays in, one row per stored event out, keyed by order id).
_INGEST_BATCH = f"""
WITH i AS (
    SELECT * FROM unnest(%(at)b::timestamptz[], %(kind)b::text[], %(order_id)b::text[], %(payload)b::text[],
                         %(delivery_id)b::text[], %(scheme)b::text[], %(name)b::text[], %(phone_raw)b::text[],
                         %(phone)b::text[], %(product)b::text[], %(total)b::numeric[], %(pix)b::text[],
                         %(expires_at)b::timestamptz[], %(expired)b::timestamptz[], %(paid)b::timestamptz[],
                         %(message_phone)b::text[], %(status)b::text[], %(reason)b::text[])
        AS i(at, kind, order_id, payload, delivery_id, scheme, name, phone_raw, phone, product, total, pix,
             expires_at, expired, paid, message_phone, status, reason)
), ev AS (
    INSERT INTO webhook_events (received_at, event_kind, order_id, payload, delivery_id, scheme, status)
    SELECT at, kind, order_id, payload::jsonb, delivery_id, scheme, 'processed' FROM i ORDER BY order_id
    ON CONFLICT DO NOTHING RETURNING id, order_id
), o AS (
    INSERT INTO orders (order_id, customer_name, phone_raw, phone, product, total, pix_code, expires_at,
                        expired_at, paid_at, updated_at)
    SELECT i.order_id, i.name, i.phone_raw, i.phone, i.product, i.total, i.pix, i.expires_at, i.expired,
           i.paid, i.at FROM i JOIN ev ON ev.order_id = i.order_id ORDER BY i.order_id
{_ORDER_UPSERT}
    RETURNING order_id, paid_at, reminded_at
), c AS (
    UPDATE outbound_messages AS om SET status = 'cancelled', reason = 'order paid', status_at = i.at
    FROM i JOIN ev ON ev.order_id = i.order_id
    WHERE i.kind = 'order_paid' AND om.order_id = i.order_id AND om.step > 0 AND om.status = 'pending'
    RETURNING om.order_id
), m AS (
    INSERT INTO outbound_messages (webhook_event_id, kind, phone, body, status, send_after, order_id, step,
                                   due_at, expires_at, reason, status_at, created_at)
    SELECT ev.id, v.kind, i.message_phone, v.body, i.status, v.due, i.order_id, v.step, v.due,
           v.expires, i.reason, i.at, i.at
    FROM unnest(%(m_order)b::text[], %(m_kind)b::text[], %(m_step)b::int[], %(m_body)b::text[],
                %(m_due)b::timestamptz[], %(m_expires)b::timestamptz[])
             AS v(order_id, kind, step, body, due, expires)
         JOIN i ON i.order_id = v.order_id JOIN ev ON ev.order_id = v.order_id
         JOIN o ON o.order_id = v.order_id
    WHERE i.kind = 'order_paid' OR o.paid_at IS NULL
    ON CONFLICT DO NOTHING
)
SELECT ev.order_id, ev.id, o.paid_at IS NULL, o.reminded_at IS NOT NULL,
       (SELECT count(*) FROM c WHERE c.order_id = ev.order_id)
FROM ev JOIN o ON o.order_id = ev.order_id
"""


class _Prepared:
    """One event's parameters for _INGEST (its messages rendered), and how to read its answer."""

    __slots__ = ("dues", "ev", "params", "phone")

    def __init__(self, item: Incoming, plan: Plan) -> None:
        ev, now = item.event, item.now
        at = ts(now)
        self.ev = ev
        self.phone = phone = normalise(ev.phone_raw)
        if ev.kind == "order_expired":
            planned = [(f"reminder_{i}", i, templates, now + after, now + after + max_age)
                       for i, (after, max_age, templates) in enumerate(plan.steps, start=1)]
        else:
            planned = [("thank_you", 0, plan.thank_you, now, now + plan.steps[0][1])]
        variables = _variables(ev, plan.raw["time_zone"])
        self.dues = [p[3] for p in planned]
        self.params = {
            "at": at, "kind": ev.kind, "order_id": ev.order_id, "payload": ev.payload,
            "delivery_id": item.delivery_id, "scheme": item.scheme, "name": ev.customer_name,
            "phone_raw": ev.phone_raw, "phone": phone, "product": ev.product, "total": ev.total,
            "pix": ev.pix_code, "expires_at": ev.expires_at,
            "expired": at if ev.kind == "order_expired" else None,
            "paid": at if ev.kind == "order_paid" else None,
            "message_phone": phone or ev.phone_raw,
            "status": "pending" if phone else "invalid",
            "reason": None if phone else f"impossible phone number {ev.phone_raw!r}",
            "kinds": [p[0] for p in planned], "steps": [p[1] for p in planned],
            "bodies": [p[2].render(variables, seed=f"{ev.order_id}:{p[0]}") for p in planned],
            "dues": [ts(p[3]) for p in planned], "expiries": [ts(p[4]) for p in planned],
        }

    def result(self, row: tuple[Any, ...] | None) -> Ingested:
        if row is None:
            return Ingested(duplicate=True)
        event_id, unpaid, reminded, cancelled = row
        if self.ev.kind == "order_expired":
            messages = len(self.dues) if unpaid else 0  # already paid (out of order): no reminder
            return Ingested(False, event_id, messages, 0, False,
                            min(self.dues) if messages and self.phone else None)
        return Ingested(False, event_id, 1, cancelled, reminded, self.dues[0] if self.phone else None)


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


def _mark_reminded(conn: psycopg.Connection, message_id: int, now: float) -> None:
    # A reminder (step > 0) that reached the customer marks its order reminded (the report's base).
    conn.execute("UPDATE orders SET reminded_at = COALESCE(reminded_at, %s) FROM outbound_messages m"
                 " WHERE m.id = %s AND m.step > 0 AND m.order_id = orders.order_id", (ts(now), message_id))


# Outcomes, the stale sweep and ack matching (held_acks, migration 0004): services/outbox.
OUTBOX = Outbox("outbound_messages", "recovery-ack:", on_sent=_mark_reminded, send_ms=True)


def next_due(conn: psycopg.Connection) -> float | None:
    row = conn.execute("SELECT min(send_after) FROM outbound_messages WHERE status = 'pending'").fetchone()
    return row[0].timestamp() if row and row[0] else None


def record_manual(conn: psycopg.Connection, message_id: str, instance: str, jid: str, now: float) -> bool:
    return conn.execute("INSERT INTO manual_messages (message_id, instance, remote_jid, at)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (message_id, instance, jid, ts(now))).rowcount == 1


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


