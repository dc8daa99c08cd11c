"""messages.update matching for campaigns on the real database. Evolution posts a send's ack before
it answers sendText, and the same number is often a recipient of several campaigns, so an ack for
an id no row holds yet must never be pinned on a recipient by phone: each recipient ends up with
its own id, and a recipient whose send never left is never counted as sent."""

from __future__ import annotations

import psycopg
import pytest

from oraclewad.services.broadcast import store

PHONE = "5511987654321"
T0 = 1_800_000_000.0
OUTBOX = store.OUTBOX


@pytest.fixture
def db(broadcast_db):
    with psycopg.connect(broadcast_db, autocommit=True) as conn:
        yield conn


def claimed(conn, campaign: str, at: float, instance: str = "bc-1") -> store.Claimed:
    """`campaign`'s recipient PHONE, claimed (status 'sending') at `at` as the sender leaves it."""
    cid = store.create(conn, campaign, ["Oi {{name}}"], at)
    (rid,) = conn.execute(
        "INSERT INTO recipients (campaign_id, phone, status, body, instance, claimed_at, attempts)"
        " VALUES (%s, %s, 'sending', %s, %s, %s, 1) RETURNING id",
        (cid, PHONE, f"text of {campaign}", instance, store.ts(at))).fetchone()
    return store.Claimed(rid, cid, PHONE, f"text of {campaign}", instance)


def state(conn, r: store.Claimed) -> tuple[str, str | None]:
    return conn.execute("SELECT status, provider_message_id FROM recipients WHERE id = %s",
                        (r.id,)).fetchone()


def test_an_ack_of_a_killed_senders_send_never_lands_on_the_other_campaigns_recipient(db):
    # Campaign A's send to PHONE reached Evolution; the sender was killed (-9) before its answer.
    a = claimed(db, "A", T0)
    # The new process sends campaign B's message to the same number on the same instance. A's ack
    # (Evolution retries it) comes while B is in flight, and B's own ack before B's answer.
    b = claimed(db, "B", T0 + 40)
    assert OUTBOX.apply_ack(db, "bc-1", "id-a", PHONE, "DELIVERY_ACK", T0 + 40.5) == "held"
    assert OUTBOX.apply_ack(db, "bc-1", "id-b", PHONE, "SERVER_ACK", T0 + 40.6) == "held"
    OUTBOX.record_sent(db, b.id, b.instance, "id-b", T0 + 40.7)
    assert state(db, b) == ("sent", "id-b")
    # A is swept uncertain; once no send in flight can own A's held ack, it resolves A.
    assert OUTBOX.sweep_stale(db, T0 + 30, T0 + 60) == 1
    assert OUTBOX.settle_held(db, T0 + 60, T0 + 60) == 1
    assert (state(db, a), state(db, b)) == (("delivered", "id-a"), ("sent", "id-b"))
    # Later acks go to their own rows.
    assert OUTBOX.apply_ack(db, "bc-1", "id-b", PHONE, "READ", T0 + 61) == "applied"
    assert (state(db, a), state(db, b)) == (("delivered", "id-a"), ("read", "id-b"))
    assert db.execute("SELECT count(*) FROM held_acks").fetchone() == (0,)


def test_a_recipient_whose_send_never_left_is_never_counted_sent(db):
    # The killed sender had claimed A but its request never left; B (another campaign, same
    # number) is then sent and acked before its answer.
    a = claimed(db, "A", T0)
    b = claimed(db, "B", T0 + 40)
    assert OUTBOX.apply_ack(db, "bc-1", "id-b", PHONE, "SERVER_ACK", T0 + 40.5) == "held"
    OUTBOX.record_sent(db, b.id, b.instance, "id-b", T0 + 40.6)
    assert OUTBOX.sweep_stale(db, T0 + 30, T0 + 60) == 1
    assert OUTBOX.settle_held(db, T0 + 60, T0 + 60) == 0
    assert (state(db, a), state(db, b)) == (("uncertain", None), ("sent", "id-b"))


def test_an_ack_for_a_test_message_or_a_replay_is_no_recipients(db):
    u = claimed(db, "A", T0)
    OUTBOX.set_status(db, u.id, "uncertain", "outcome unknown: timeout", T0 + 3)
    store.record_test(db, u.campaign_id, PHONE, "test", "bc-1", "id-test", "sent", T0 + 4)
    assert OUTBOX.apply_ack(db, "bc-1", "id-test", PHONE, "SERVER_ACK", T0 + 5) == "ignored"
    assert state(db, u) == ("uncertain", None)
    # With nothing in flight, an unknown id resolves the uncertain recipient at once.
    assert OUTBOX.apply_ack(db, "bc-1", "id-u", PHONE, "SERVER_ACK", T0 + 6) == "applied"
    assert state(db, u) == ("sent", "id-u")
    assert OUTBOX.apply_ack(db, "bc-1", "id-u", PHONE, "SERVER_ACK", T0 + 7) == "ignored"
