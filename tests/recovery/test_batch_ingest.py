"""Group commit's batch statement stores exactly what one statement per event stores: the same
answers (duplicate, messages queued, reminders cancelled, first due) and the same rows, for the
cases a batch mixes (new orders, an impossible phone, a payment cancelling a reminder, a paid
order's late expiry, duplicates by event and by delivery id, two events of one order)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import psycopg
import pytest

from oraclewad import recovery_plan
from oraclewad.services.recovery import payload, store
from tests.recovery.support import order
from tests.services.sending import drop_database, make_database

T0 = 1_800_000_000.0
PLAN = store.Plan.from_raw(recovery_plan.parse({"steps": [
    {"after": 60, "templates": ["{Oi|Olá} {{first_name}}, seu pix: {{pix_code}}"]},
    {"after": 3600, "templates": ["Ainda dá tempo, {{name}}"]}]})[0])


def incoming(event: str, order_id: str, delivery: str | None = None, *, phone: str = "(11) 98765-4321",
             at: float = T0) -> store.Incoming:
    body = json.dumps(order(event, order_id, phone=phone)).encode()
    return store.Incoming(payload.parse(body, PLAN.raw["time_zone"]), delivery, "standard", at)


# Each inner list arrives together (one batch).
BATCHES = [
    [incoming("order.expired", "A", "d-1"), incoming("order.expired", "B", phone="123"),
     incoming("order.paid", "C", "d-3")],
    [incoming("order.paid", "A", "d-4", at=T0 + 5), incoming("order.expired", "B", at=T0 + 5),
     incoming("order.expired", "D", "d-1", at=T0 + 5), incoming("order.expired", "C", at=T0 + 5)],
    [incoming("order.expired", "E", at=T0 + 9), incoming("order.paid", "E", at=T0 + 9),
     incoming("order.expired", "F", "d-9", at=T0 + 9), incoming("order.expired", "G", "d-9", at=T0 + 9)],
]

TABLES = {
    "webhook_events": "SELECT order_id, event_kind, delivery_id, scheme, status, received_at,"
                      " payload::text FROM webhook_events ORDER BY order_id, event_kind",
    "orders": "SELECT order_id, customer_name, phone_raw, phone, product, total, pix_code, expires_at,"
              " expired_at, paid_at, updated_at, recovered FROM orders ORDER BY order_id",
    "outbound_messages": "SELECT m.order_id, m.kind, m.step, m.phone, m.body, m.status, m.reason,"
                         " m.send_after, m.due_at, m.expires_at, m.status_at, e.event_kind"
                         " FROM outbound_messages m JOIN webhook_events e ON e.id = m.webhook_event_id"
                         " ORDER BY m.order_id, m.kind",
}


def contents(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(query).fetchall() for name, query in TABLES.items()}


def answers(results: list[Any]) -> list[Any]:
    # event ids differ between the two databases; the rest of each answer must not
    return [r if isinstance(r, Exception) else (r.duplicate, r.messages, r.cancelled, r.recovered,
                                                 r.first_due) for r in results]


@pytest.fixture
def one_by_one_db(pg_admin: str):
    dsn = make_database(pg_admin, "recovery")
    yield dsn
    drop_database(pg_admin, dsn)


def test_a_batch_stores_what_one_statement_per_event_stores(recovery_db, one_by_one_db):
    batched, single = [], []
    with psycopg.connect(recovery_db) as conn:
        for batch in BATCHES:
            with conn.transaction():
                batched.append(answers(store.ingest_many(conn, batch, PLAN)))
    with psycopg.connect(one_by_one_db) as conn:
        for batch in BATCHES:
            single.append(answers([store.ingest(conn, i.event, i.delivery_id, i.scheme, PLAN, i.now)
                                   for i in batch]))
            conn.commit()
    assert batched == single
    # What the answers say, spelled out for the cases that matter.
    first, second, third = batched
    assert first == [(False, 2, 0, False, T0 + 60), (False, 2, 0, False, None), (False, 1, 0, False, T0)]
    assert second[0][:3] == (False, 1, 2)                  # A paid: its pending reminders cancelled
    assert second[1:] == [(True, 0, 0, False, None)] * 2 + [(False, 0, 0, False, None)]
    assert third[1][:3] == (False, 1, 2) and third[3][0] is True  # one order twice; delivery id twice
    assert contents(recovery_db) == contents(one_by_one_db)


def test_a_batch_is_committed_before_it_answers_and_leaves_the_connection_as_it_was(recovery_db):
    """The usual batch is one statement run as its own transaction (no BEGIN/COMMIT round trips):
    when ingest_many returns, its events are already committed, seen by any other connection."""
    with psycopg.connect(recovery_db) as conn:
        results = store.ingest_many(conn, [incoming("order.expired", "P"), incoming("order.paid", "Q")], PLAN)
        assert [r.duplicate for r in results] == [False, False]
        assert conn.autocommit is False
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with psycopg.connect(recovery_db) as other:
            stored = other.execute("SELECT order_id FROM webhook_events ORDER BY 1").fetchall()
            assert stored == [("P",), ("Q",)]
        # A value PostgreSQL refuses still costs only its own event (each then in a transaction).
        good = incoming("order.expired", "R")
        bad = dataclasses.replace(good, event=dataclasses.replace(good.event, payload='{"x": "\\u0000"}'))
        results = store.ingest_many(conn, [incoming("order.expired", "S"), bad], PLAN)
        assert isinstance(results[1], psycopg.DataError) and results[0].duplicate is False
        assert conn.autocommit is False


def test_a_connection_lost_under_a_batch_is_an_outage_for_the_whole_batch(recovery_db):
    with psycopg.connect(recovery_db) as conn, psycopg.connect(recovery_db, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            store.ingest_many(conn, [incoming("order.expired", "T"), incoming("order.expired", "U")], PLAN)
        assert admin.execute("SELECT count(*) FROM webhook_events").fetchone() == (0,)
