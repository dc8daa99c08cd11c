"""Order webhooks become WhatsApp messages in the Evolution sandbox: the real recovery child, the
real sandbox, real HTTP both ways (the sandbox posts its events to the child's /webhooks/evolution)."""

from __future__ import annotations

import signal

import httpx
import pytest
import trio

from tests.recovery.support import encode, order, post_order, rows, standard_headers
from tests.services import sending as sending_
from tests.services.sending import wait_messages, wait_rows

JWT_KEY = "jwt-key-for-the-recovery-tests-0123456789"
THANKS = "Obrigado {{first_name}}, pagamento de {{total}} recebido ({{product}})."
REMIND = "Oi {{first_name}}, o PIX de {{total}} expirou. Código: {{pix_code}}"


def evolution_config(sandbox, instances=("rec-1",), **recovery):
    plan = {"typing_delay_ms": 0, "min_gap": 0, "send_timeout": 2,
            "steps": [{"after": 1, "templates": [REMIND]}], "thank_you": {"templates": [THANKS]}}
    plan.update(recovery)
    return {"evolution": {"url": sandbox.url, "api_key": sandbox.api_key, "api_version": 2,
                          "webhook_jwt_key": JWT_KEY},
            "instances": list(instances), "recovery": plan}


async def hook_up(sandbox, child, *names):
    await sending_.hook_up(sandbox, child, JWT_KEY, *names)


@pytest.fixture
async def sending(sandbox, start_recovery, recovery_db):
    await sandbox.create_instance("rec-1")
    child = await start_recovery(recovery_db, **evolution_config(sandbox))
    await hook_up(sandbox, child, "rec-1")
    return child


async def test_signed_order_paid_becomes_exactly_the_rendered_thank_you(sandbox, sending, recovery_db):
    async with httpx.AsyncClient(base_url=sending.url) as client:
        assert (await post_order(client, order("order.paid", order_id="P-1"), "hmac")).status_code == 202
        body = encode(order("order.paid", order_id="P-2", name="João Souza", total="99.9"))
        assert (await client.post("/webhooks/orders", content=body,
                                  headers=standard_headers(body))).status_code == 202
    sent = await wait_messages(sandbox, 2)
    assert sorted((m["number"], m["text"]) for m in sent) == [
        ("5511987654321", "Obrigado João, pagamento de R$ 99,90 recebido (Rifa Moto 0km)."),
        ("5511987654321", "Obrigado Maria, pagamento de R$ 1.234,56 recebido (Rifa Moto 0km)."),
    ]
    # The sandbox's acks came back through /webhooks/evolution (JWT-signed).
    await wait_rows(recovery_db, "SELECT status FROM outbound_messages WHERE status = 'sent'",
                    [("sent",), ("sent",)])


async def test_duplicate_delivery_sends_one_message_and_paid_cancels_the_reminder(sandbox, sending,
                                                                                   recovery_db):
    doc = order(order_id="D-1")
    body = encode(doc)
    headers = standard_headers(body, msg_id="msg_dup")
    async with httpx.AsyncClient(base_url=sending.url) as client:
        for _ in range(3):
            await client.post("/webhooks/orders", content=body, headers=headers)
        # Paid before the reminder's second: the reminder is cancelled, the thank-you goes.
        await post_order(client, order(order_id="C-1"))
        await post_order(client, order("order.paid", order_id="C-1"))
    await wait_messages(sandbox, 2)
    await trio.sleep(1.5)  # past the cancelled reminder's time: still only two
    sent = await sandbox.messages()
    texts = sorted(m["text"] for m in sent)
    assert len(texts) == 2, texts
    assert texts[0].startswith("Obrigado Maria") and texts[1].startswith("Oi Maria, o PIX de R$ 1.234,56")
    assert rows(recovery_db, "SELECT order_id, kind, status FROM outbound_messages WHERE order_id = 'C-1' "
                             "ORDER BY id") == [("C-1", "reminder_1", "cancelled"),
                                                ("C-1", "thank_you", "sent")]


async def test_a_send_that_times_out_after_acceptance_is_uncertain_never_resent_until_acked(
        sandbox, start_recovery, recovery_db):
    # No webhook on the instance yet: the sandbox's own SERVER_ACK cannot reach us.
    await sandbox.create_instance("rec-1")
    child = await start_recovery(recovery_db, **evolution_config(sandbox))
    await sandbox.fault("accept_then_hang", instance="rec-1")
    async with httpx.AsyncClient(base_url=child.url) as client:
        await post_order(client, order("order.paid", order_id="U-1"))
    await wait_rows(recovery_db, "SELECT status FROM outbound_messages", [("uncertain",)])
    await trio.sleep(3)  # several sender rounds: it is not sent again
    assert len(await sandbox.messages()) == 1
    await hook_up(sandbox, child, "rec-1")
    (sent,) = await sandbox.messages()
    await sandbox.ack(sent["id"], "DELIVERY_ACK")
    await wait_rows(recovery_db, "SELECT status, provider_message_id FROM outbound_messages",
                    [("delivered", sent["id"])])


async def test_banned_instance_leaves_rotation_and_with_none_left_messages_wait(sandbox, start_recovery,
                                                                                recovery_db):
    await sandbox.create_instance("rec-1")
    await sandbox.create_instance("rec-2")
    child = await start_recovery(recovery_db, **evolution_config(sandbox, instances=("rec-1", "rec-2")))
    await hook_up(sandbox, child, "rec-1", "rec-2")
    await sandbox.set_state("rec-1", "close", 403)
    async with httpx.AsyncClient(base_url=child.url) as client:
        for i in range(4):
            await post_order(client, order("order.paid", order_id=f"B-{i}"))
    sent = await wait_messages(sandbox, 4)
    assert {m["instance"] for m in sent} == {"rec-2"}
    await sandbox.set_state("rec-2", "close", 402)
    async with httpx.AsyncClient(base_url=child.url) as client:
        await post_order(client, order("order.paid", order_id="B-late"))
    await trio.sleep(2)
    assert len(await sandbox.messages()) == 4
    late = rows(recovery_db, "SELECT status FROM outbound_messages WHERE order_id = 'B-late'")
    assert late == [("pending",)]
    transport = httpx.AsyncHTTPTransport(uds=str(child.admin_socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as admin:
        with trio.fail_after(15):  # the outbox figures are refreshed every few seconds
            while not (health := await admin.get("/healthz")).json()["checks"]["outbox"].get("due"):
                await trio.sleep(0.5)
    assert health.status_code == 503
    checks = health.json()["checks"]
    assert not checks["instances"]["ok"] and "banned" in checks["instances"]["detail"]
    assert checks["outbox"]["due"] >= 1


async def test_kill_9_under_load_loses_no_acknowledged_event_and_sends_no_duplicate(
        sandbox, start_recovery, recovery_db):
    await sandbox.create_instance("rec-1")
    await sandbox.create_instance("rec-2")
    config = evolution_config(sandbox, instances=("rec-1", "rec-2"))
    child = await start_recovery(recovery_db, **config)
    await hook_up(sandbox, child, "rec-1", "rec-2")
    acked: set[str] = set()

    async def shop(worker: int) -> None:
        # A loaded machine may answer slowly; the kill itself fails every request at once.
        async with httpx.AsyncClient(base_url=child.url, timeout=30) as client:
            for i in range(200):
                # A distinct total per order makes each thank-you's text unique.
                doc = order("order.paid", order_id=f"K-{worker}-{i}", total=worker * 1000 + i + 1)
                try:
                    response = await post_order(client, doc)
                except httpx.HTTPError:
                    return  # the child died under us: unacknowledged, the shop would retry
                if response.status_code == 202:
                    acked.add(doc["data"]["id"])

    async with trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(shop, w)
        with trio.fail_after(60):   # killed mid-load: webhooks acknowledged and sends under way
            while len(acked) < 50:
                await trio.sleep(0.05)
        child.process.signal(signal.SIGKILL)
    await child.process.wait()
    dead = [r[0] for r in rows(recovery_db, "SELECT DISTINCT claimed_by FROM outbound_messages"
                                            " WHERE claimed_by IS NOT NULL")]
    # The daemon would restart it on the same socket; here the test does.
    again = await start_recovery(recovery_db, **config)
    await hook_up(sandbox, again, "rec-1", "rec-2")
    stored = {r[0] for r in rows(recovery_db, "SELECT order_id FROM webhook_events")}
    assert acked <= stored
    with trio.fail_after(120):
        while rows(recovery_db, "SELECT count(*) FROM outbound_messages"
                                " WHERE status IN ('pending', 'sending')") != [(0,)]:
            await trio.sleep(0.2)
    sent = await sandbox.messages()
    texts = [m["text"] for m in sent]
    assert len(texts) == len(set(texts)), "a message went out twice"
    by_order = rows(recovery_db, "SELECT order_id, status FROM outbound_messages")
    assert len(by_order) == len(stored)
    statuses = {s for _, s in by_order}
    assert statuses <= {"sent", "delivered", "read", "uncertain"}, statuses
    uncertain = sum(1 for _, s in by_order if s == "uncertain")
    # Each row counted as sent holds the id of a message the sandbox really sent, its own.
    ids = [r[0] for r in rows(recovery_db, "SELECT provider_message_id FROM outbound_messages"
                                           " WHERE status IN ('sent', 'delivered', 'read')")]
    assert len(ids) == len(set(ids)) and set(ids) <= {m["id"] for m in sent}
    # Every stored event was sent exactly once, or (killed mid-send) is uncertain and not resent.
    assert len(sent) in range(len(stored) - uncertain, len(stored) + 1)
    # At most one send in flight per instance when the process died. (The new process's own sends
    # may also time out on a loaded machine: uncertain too, and counted above, but not this.)
    in_flight = rows(recovery_db, "SELECT count(*) FROM outbound_messages WHERE status = 'uncertain'"
                                  " AND claimed_by = ANY(%s)", dead)
    assert in_flight[0][0] <= 2, in_flight


@pytest.mark.parametrize("scope", ["all", "broadcast"])
async def test_lid_addressed_opt_out_is_tenant_wide_and_stops_recovery_only_with_scope_all(
        sandbox, start_recovery, recovery_db, shared_dsn, scope):
    await sandbox.create_instance("rec-1")
    child = await start_recovery(recovery_db, shared={"dsn": shared_dsn},
                                 **evolution_config(sandbox, opt_out_scope=scope))
    await hook_up(sandbox, child, "rec-1")
    # The customer answers "Sáir!" and Evolution addresses the message by LID.
    await sandbox.inject_upsert("rec-1", "5511987654321", "  Sáir! ", lid=True)
    await sandbox.inject_upsert("rec-1", "5511911112222", "quero sair do grupo?")  # a sentence: kept
    await wait_rows(shared_dsn, "SELECT phone, word FROM suppressions", [("5511987654321", "SAIR")])
    # Typed on the phone by the shop owner: a manual message, not ours.
    await sandbox.inject_upsert("rec-1", "5511933334444", "oi, tudo bem?", from_me=True)
    await wait_rows(recovery_db, "SELECT remote_jid FROM manual_messages",
                    [("5511933334444@s.whatsapp.net",)])
    async with httpx.AsyncClient(base_url=child.url) as client:
        await post_order(client, order("order.paid", order_id="O-1"))
        await post_order(client, order("order.expired", order_id="O-2"))   # its reminder is due in 1 s
    if scope == "all":
        # Recovery sends the opted-out customer nothing at all: neither thank-you nor reminder.
        await wait_rows(recovery_db, "SELECT kind, status FROM outbound_messages ORDER BY kind",
                        [("reminder_1", "suppressed"), ("thank_you", "suppressed")])
        await trio.sleep(1)
        assert await sandbox.messages() == []
    else:
        await wait_messages(sandbox, 2)
    assert rows(recovery_db, "SELECT phone FROM opt_outs") == [("5511987654321",)]


async def test_the_recovery_report_matches_what_happened(sandbox, start_recovery, recovery_db):
    await sandbox.create_instance("rec-1")
    child = await start_recovery(recovery_db, **evolution_config(sandbox))
    await hook_up(sandbox, child, "rec-1")
    async with httpx.AsyncClient(base_url=child.url) as client:
        for oid, total in (("R-1", 100), ("R-2", "250.50"), ("R-3", 80)):
            await post_order(client, order(order_id=oid, total=total))
        await post_order(client, order(order_id="R-bad", phone="123"))
        await wait_rows(recovery_db, "SELECT count(*) FROM orders WHERE reminded_at IS NOT NULL", [(3,)])
        for oid, total in (("R-1", 100), ("R-2", "250.50"), ("R-new", 999)):
            await post_order(client, order("order.paid", order_id=oid, total=total))
    await wait_messages(sandbox, 6)
    transport = httpx.AsyncHTTPTransport(uds=str(child.admin_socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as admin:
        response = await admin.get("/recovery/report", params={"since": 3600})
        bad = await admin.get("/recovery/report", params={"since": "7x"})
    assert bad.status_code == 400 and bad.json()["field"] == "since"
    report = response.json()
    assert (report["orders_expired"], report["orders_reminded"], report["orders_recovered"]) == (4, 3, 2)
    assert report["revenue_recovered"] == "350.50" and report["conversion"] == pytest.approx(2 / 3, abs=1e-3)
    assert report["invalid_numbers"] == 1 and report["opt_outs"] == 0 and report["uncertain"] == 0
    assert report["messages"].get("invalid") == 1
    assert sum(report["messages"].get(s, 0) for s in ("sent", "delivered", "read")) == 6
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as admin:
        metrics = (await admin.get("/metrics")).text
    assert 'oraclewa_recovery_webhooks_total{event="order_paid",result="accepted"} 3.0' in metrics
    assert "oraclewa_recovery_recovered_orders_total 2.0" in metrics
    assert "oraclewa_recovery_revenue_brl_total 350.5" in metrics
