"""messages.update matching on the real database: Evolution posts a send's SERVER_ACK before it
answers sendText, so acks often name an id no row holds yet. Each message must end up with its
own id, and a row whose send never left must never be counted as sent."""

from __future__ import annotations

import psycopg
import pytest

from oraclewad.services.outbox import HELD_KEEP
from oraclewad.services.recovery import store

OUTBOX = store.OUTBOX

PHONE = "5511987654321"
T0 = 1_800_000_000.0


@pytest.fixture
def db(recovery_db):
    with psycopg.connect(recovery_db, autocommit=True) as conn:
        yield conn


def claimed(conn, n: int, at: float, instance: str = "rec-1", phone: str = PHONE) -> store.Claimed:
    """A message claimed (status 'sending') at `at`, as the sender's claim leaves it."""
    (event,) = conn.execute("INSERT INTO webhook_events (event_kind, order_id, payload) VALUES"
                            " ('order_paid', %s, '{}') RETURNING id", (f"O-{n}",)).fetchone()
    (mid,) = conn.execute(
        "INSERT INTO outbound_messages (webhook_event_id, kind, phone, body, status, instance, claimed_at,"
        " order_id, step) VALUES (%s, 'thank_you', %s, %s, 'sending', %s, %s, %s, 0) RETURNING id",
        (event, phone, f"text {n}", instance, store.ts(at), f"O-{n}")).fetchone()
    return store.Claimed(mid, phone, f"text {n}", 0, instance, "thank_you")


def state(conn, msg: store.Claimed) -> tuple[str, str | None]:
    return conn.execute("SELECT status, provider_message_id FROM outbound_messages WHERE id = %s",
                        (msg.id,)).fetchone()


def test_acks_that_overtake_their_answers_never_land_on_another_row(db):
    # A sender died (kill -9) after claiming S, before its request left: S was never sent.
    s = claimed(db, 0, T0)
    # The next process sends A, then B (the instance is free again before A's outcome is recorded).
    a = claimed(db, 1, T0 + 10)
    b = claimed(db, 2, T0 + 11)
    # Both acks arrive before the answers that carry their ids.
    assert OUTBOX.apply_ack(db, "rec-1", "id-a", PHONE, "SERVER_ACK", T0 + 11.1) == "held"
    assert OUTBOX.apply_ack(db, "rec-1", "id-b", PHONE, "SERVER_ACK", T0 + 11.2) == "held"
    OUTBOX.record_sent(db, a.id, a.instance, "id-a", T0 + 11.3, 50)
    OUTBOX.record_sent(db, b.id, b.instance, "id-b", T0 + 11.4, 50)
    assert (state(db, a), state(db, b)) == (("sent", "id-a"), ("sent", "id-b"))
    # S is swept uncertain; no ack is left over to resolve it: it was never sent, and stays unknown.
    assert OUTBOX.sweep_stale(db, T0 + 9, T0 + 30) == 1
    assert OUTBOX.settle_held(db, T0 + 30, T0 + 30) == 0
    assert state(db, s) == ("uncertain", None)
    assert db.execute("SELECT count(*) FROM held_acks").fetchone() == (0,)
    # Later acks go to their own rows.
    assert OUTBOX.apply_ack(db, "rec-1", "id-b", PHONE, "DELIVERY_ACK", T0 + 31) == "applied"
    assert (state(db, a), state(db, b)) == (("sent", "id-a"), ("delivered", "id-b"))


def test_a_held_ack_resolves_the_uncertain_row_once_no_send_in_flight_can_own_it(db):
    s = claimed(db, 0, T0)                     # its send did reach Evolution; the process died
    b = claimed(db, 1, T0 + 10)                # in flight on the same instance to the same number
    # S's ack (retried by Evolution) reaches the new process while B is in flight: it cannot tell.
    assert OUTBOX.apply_ack(db, "rec-1", "id-s", PHONE, "DELIVERY_ACK", T0 + 10.5) == "held"
    OUTBOX.record_sent(db, b.id, b.instance, "id-b", T0 + 10.6, 50)
    assert OUTBOX.settle_held(db, T0 + 10, T0 + 12) == 0       # not past the cut-off yet
    OUTBOX.sweep_stale(db, T0 + 5, T0 + 20)
    assert OUTBOX.settle_held(db, T0 + 11, T0 + 20) == 1
    assert (state(db, s), state(db, b)) == (("delivered", "id-s"), ("sent", "id-b"))


def test_with_nothing_in_flight_an_unknown_id_resolves_the_uncertain_row_at_once(db):
    u = claimed(db, 0, T0)
    OUTBOX.set_status(db, u.id, "uncertain", "outcome unknown: timeout", T0 + 3)
    other = claimed(db, 1, T0 + 1, instance="rec-2")   # another instance's send does not hold it up
    assert OUTBOX.apply_ack(db, "rec-1", "id-u", PHONE, "SERVER_ACK", T0 + 4) == "applied"
    assert state(db, u) == ("sent", "id-u")
    assert state(db, other) == ("sending", None)
    assert OUTBOX.apply_ack(db, "rec-1", "id-u", PHONE, "SERVER_ACK", T0 + 5) == "ignored"  # a replay


def test_an_ack_that_came_before_a_claim_never_resolves_that_row(db):
    # Typed on the phone by the owner: Evolution acks a message we never sent.
    assert OUTBOX.apply_ack(db, "rec-1", "id-manual", PHONE, "SERVER_ACK", T0) == "held"
    later = claimed(db, 0, T0 + 1)
    OUTBOX.set_status(db, later.id, "uncertain", "outcome unknown: timeout", T0 + 3)
    assert OUTBOX.settle_held(db, T0 + 10, T0 + 10) == 0
    assert state(db, later) == ("uncertain", None)
    OUTBOX.settle_held(db, T0, T0 + HELD_KEEP + 1)
    assert db.execute("SELECT count(*) FROM held_acks").fetchone() == (0,)
