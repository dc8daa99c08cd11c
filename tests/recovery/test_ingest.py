"""POST /webhooks/orders on the real recovery child: who may post, what is stored, what is refused."""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest
import trio

from tests.recovery.support import (
    SECRET,
    TOKEN,
    encode,
    hmac_headers,
    order,
    post_order,
    rows,
    standard_headers,
)


@pytest.fixture
async def child(start_recovery, recovery_db):
    return await start_recovery(recovery_db)


async def test_both_signature_schemes_store_the_event_and_its_reminder(child, recovery_db):
    async with httpx.AsyncClient(base_url=child.url) as client:
        a = await post_order(client, order(order_id="A-1"), "hmac")
        b = await post_order(client, order(order_id="B-1", phone="11 8765-4321"), "standard")
    assert a.status_code == 202 and a.json()["status"] == "accepted"
    assert b.status_code == 202
    events = rows(recovery_db, "SELECT order_id, event_kind, scheme FROM webhook_events ORDER BY id")
    assert events == [("A-1", "order_expired", "hmac"), ("B-1", "order_expired", "standard")]
    messages = rows(recovery_db,
                    "SELECT order_id, kind, phone, status, body FROM outbound_messages ORDER BY id")
    assert [m[:4] for m in messages] == [("A-1", "reminder_1", "5511987654321", "pending"),
                                         ("B-1", "reminder_1", "5511987654321", "pending")]
    # The default template, rendered with BRL and the pt-BR expiry in São Paulo time.
    assert "Maria! " in messages[0][4] and "R$ 1.234,56" in messages[0][4]
    assert "01/12/2026 às 14:30" in messages[0][4] and "00020126580014br.gov.bcb.pix0136abc" in messages[0][4]


@pytest.mark.parametrize("case", ["no signature", "bad hmac", "stale hmac", "future standard", "bad standard",
                                  "wrong secret", "static token disabled", "standard without id"])
async def test_unauthenticated_requests_get_401_and_store_nothing(child, recovery_db, case):
    body = encode(order())
    now_ms = int(time.time() * 1000)
    headers = {
        "no signature": {},
        "bad hmac": {**hmac_headers(body), "x-webhook-signature": "0" * 64},
        "stale hmac": hmac_headers(body, at_ms=now_ms - 301_000),
        "future standard": standard_headers(body, at=int(time.time()) + 400),
        "bad standard": {**standard_headers(body), "webhook-signature": "v1,AAAA v1,bm9wZQ=="},
        "wrong secret": hmac_headers(body, secret="whsec_b3RoZXJvdGhlcm90aGVy"),
        "static token disabled": {"x-auth-webhook": TOKEN},
        "standard without id": {k: v for k, v in standard_headers(body).items() if k != "webhook-id"},
    }[case]
    async with httpx.AsyncClient(base_url=child.url) as client:
        response = await client.post("/webhooks/orders", content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert rows(recovery_db, "SELECT count(*) FROM webhook_events") == [(0,)]


async def test_a_replayed_delivery_or_the_same_order_event_answers_200_and_does_nothing(child, recovery_db):
    doc = order(order_id="D-1")
    body = encode(doc)
    headers = standard_headers(body, msg_id="msg_same")
    async with httpx.AsyncClient(base_url=child.url) as client:
        first = await client.post("/webhooks/orders", content=body, headers=headers)
        again = await client.post("/webhooks/orders", content=body, headers=headers)
        # Same (order, event) under a new delivery id and the other scheme: still the same event.
        other = await post_order(client, doc, "hmac")
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert other.status_code == 200 and other.json()["status"] == "duplicate"
    assert rows(recovery_db, "SELECT count(*) FROM webhook_events") == [(1,)]
    assert rows(recovery_db, "SELECT count(*) FROM outbound_messages") == [(1,)]


async def test_static_token_only_when_the_tenant_turns_it_on(start_recovery, recovery_db):
    child = await start_recovery(recovery_db, recovery={"static_token": True})
    async with httpx.AsyncClient(base_url=child.url) as client:
        ok = await client.post("/webhooks/orders", content=encode(order()),
                               headers={"x-auth-webhook": TOKEN})
        bad = await client.post("/webhooks/orders", content=encode(order()),
                                headers={"x-auth-webhook": "nope"})
    assert ok.status_code == 202 and bad.status_code == 401


async def test_rotation_overlap_accepts_old_and_new_then_only_new(start_recovery, recovery_db):
    old, new = SECRET, "whsec_bmV3c2VjcmV0bmV3c2VjcmV0bmV3c2VjcmV0"
    secrets = [{"secret": new, "until": None}, {"secret": old, "until": time.time() + 3600}]
    child = await start_recovery(recovery_db, webhook_secret=new, webhook_secrets=secrets)
    expired = [{"secret": new, "until": None}, {"secret": old, "until": time.time() - 1}]
    later = await start_recovery(recovery_db, webhook_secret=new, webhook_secrets=expired)
    async with httpx.AsyncClient(base_url=child.url) as client:
        assert (await post_order(client, order(), "hmac", secret=old)).status_code == 202
        assert (await post_order(client, order(), "standard", secret=new)).status_code == 202
        # A sender in mid-rotation signs with both: Standard Webhooks carries several signatures.
        body = encode(order())
        both = standard_headers(body, secret=new, extra_signatures=("v1,bm90IHRoaXMgb25l",))
        assert (await client.post("/webhooks/orders", content=body, headers=both)).status_code == 202
    async with httpx.AsyncClient(base_url=later.url) as client:
        assert (await post_order(client, order(), "hmac", secret=old)).status_code == 401
        assert (await post_order(client, order(), "hmac", secret=new)).status_code == 202


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d.update(event="order.refunded"), "event"),
    (lambda d: d["data"].pop("id"), "data.id"),
    (lambda d: d["data"]["user"].update(phone=None), "data.user.phone"),
    (lambda d: d["data"].update(total="lots"), "data.total"),
    (lambda d: d["data"].update(total=-1), "data.total"),
    (lambda d: d["data"].update(product="Moto"), "data.product"),
    (lambda d: d["data"].update(expirationAt="amanhã"), "data.expirationAt"),
    (lambda d: d["data"]["user"].update(name="Ana\u0000"), "body.data.user.name"),
    (lambda d: d["data"]["user"].update(name="Ana\ud800"), "body"),
    (lambda d: d["data"].update(extra=_nested(40)), "body.data.extra" + "[0]" * 31),
])
async def test_invalid_payload_is_422_naming_the_field(child, recovery_db, mutate, field):
    doc = order()
    mutate(doc)
    async with httpx.AsyncClient(base_url=child.url) as client:
        response = await post_order(client, doc)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert rows(recovery_db, "SELECT count(*) FROM webhook_events") == [(0,)]


def _nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


async def test_a_number_python_will_not_convert_is_422_not_500(child, recovery_db):
    # json.loads refuses an integer of more than 4,300 digits with a ValueError of its own.
    body = encode(order())[:-1] + b', "pad": ' + b"7" * 5000 + b"}"
    async with httpx.AsyncClient(base_url=child.url) as client:
        response = await client.post("/webhooks/orders", content=body, headers=hmac_headers(body))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "body"
    assert "4,300 digits" in response.json()["detail"] and "sys." not in response.json()["detail"]
    assert rows(recovery_db, "SELECT count(*) FROM webhook_events") == [(0,)]


async def test_the_stored_payload_is_the_document_the_shop_sent(child, recovery_db):
    doc = order()
    doc["data"]["total"] = 1234.5
    doc["data"]["notes"] = "ção {x} [y]"
    async with httpx.AsyncClient(base_url=child.url) as client:
        assert (await post_order(client, doc)).status_code == 202
    assert rows(recovery_db, "SELECT payload FROM webhook_events") == [(doc,)]


async def test_body_over_one_mebibyte_is_413(child):
    body = b'{"event": "order.paid", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    async with httpx.AsyncClient(base_url=child.url) as client:
        response = await client.post("/webhooks/orders", content=body, headers=hmac_headers(body))
    assert response.status_code == 413


async def test_impossible_phone_is_recorded_invalid_not_queued(child, recovery_db):
    async with httpx.AsyncClient(base_url=child.url) as client:
        response = await post_order(client, order(order_id="P-1", phone="123"))
    assert response.status_code == 202
    assert rows(recovery_db, "SELECT status, reason FROM outbound_messages") == [
        ("invalid", "impossible phone number '123'")]


async def test_paid_cancels_pending_reminders_and_queues_the_thank_you(child, recovery_db):
    async with httpx.AsyncClient(base_url=child.url) as client:
        await post_order(client, order(order_id="C-1"))
        paid = await post_order(client, order("order.paid", order_id="C-1"))
    assert paid.status_code == 202
    assert rows(recovery_db, "SELECT kind, status FROM outbound_messages ORDER BY id") == [
        ("reminder_1", "cancelled"), ("thank_you", "pending")]
    # No reminder went out before the payment: not a recovered order.
    assert rows(recovery_db, "SELECT recovered FROM orders") == [(False,)]


async def test_webhooks_arriving_together_share_a_commit_and_one_refused_costs_the_others_nothing(
        child, recovery_db):
    """Group commit: concurrent webhooks are stored in shared transactions (rows of one
    transaction share xmin), each answered 202 only once its event is stored; an event the
    database refuses gets its 422 and the others of its batch are stored all the same."""
    ids = [f"G-{i}" for i in range(30)]
    async with httpx.AsyncClient(base_url=child.url, limits=httpx.Limits(max_connections=30)) as client:
        answers: dict[str, int] = {}

        async def post(order_id: str) -> None:
            answers[order_id] = (await post_order(client, order(order_id=order_id))).status_code

        async with trio.open_nursery() as nursery:
            for order_id in ids:
                nursery.start_soon(post, order_id)
        assert answers == {i: 202 for i in ids}
        stored = rows(recovery_db,
                      "SELECT order_id, xmin::text FROM webhook_events WHERE order_id LIKE %s", "G-%")
        assert sorted(o for o, _ in stored) == sorted(ids)
        assert len({x for _, x in stored}) < len(ids), "every webhook had a transaction of its own"

        # A value PostgreSQL refuses (a constraint our validation does not know).
        with psycopg.connect(recovery_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE orders ADD CONSTRAINT no_refused CHECK (order_id <> 'R-refused')")
        later = [f"R-{i}" for i in range(15)] + ["R-refused"]
        answers.clear()
        async with trio.open_nursery() as nursery:
            for order_id in later:
                nursery.start_soon(post, order_id)
    assert answers == {**{i: 202 for i in later}, "R-refused": 422}
    stored = rows(recovery_db, "SELECT order_id FROM webhook_events WHERE order_id LIKE %s", "R-%")
    assert sorted(o for (o,) in stored) == sorted(later[:-1])
    messages = rows(recovery_db, "SELECT order_id FROM outbound_messages WHERE order_id LIKE %s", "R-%")
    assert sorted(o for (o,) in messages) == sorted(later[:-1])
