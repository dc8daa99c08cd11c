"""A number Evolution answered `exists: false` is remembered for the tenant: once recovery has
learned it, the tenant's broadcast skips it without a lookup (each lookup is a ban risk), while
another tenant, whose shared database knows nothing of it, still tries it. Real children, the
real sandbox (which counts sendText calls per number), real shared databases."""

from __future__ import annotations

import httpx
import trio

from tests.broadcast.support import evolution_config, hook_up, rows, wait_rows
from tests.recovery.support import order, post_order, recovery_config
from tests.services import sending
from tests.services.sending import database_fixture, starter_fixture

recovery_db = database_fixture("recovery")
start_recovery = starter_fixture("recovery", recovery_config)
GONE, KEPT = "5511987654321", "5511912345678"
KNOWN = "SELECT phone, service FROM not_on_whatsapp"
RECOVERY_JWT = "jwt-key-for-the-recovery-side-0123456789"


async def campaign_to(child: sending.ServiceChild, *phones: str) -> dict:
    async with child.admin() as admin:
        created = await admin.post("/campaigns", json={"name": "n", "templates": ["Oi {{first_name}}"]})
        cid = created.json()["id"]
        csv = "telefone;nome\n" + "".join(f"{p};Cliente\n" for p in phones)
        imported = await admin.post(f"/campaigns/{cid}/recipients", json={"csv": csv})
        assert imported.json()["accepted"] == len(phones)
        await admin.post(f"/campaigns/{cid}/start", json={})
        with trio.fail_after(30):
            while (shown := (await admin.get(f"/campaigns/{cid}")).json())["status"] != "completed":
                await trio.sleep(0.2)
    return shown


async def test_exists_false_learned_by_recovery_is_never_looked_up_by_broadcast_of_that_tenant_only(
        sandbox, start_recovery, recovery_db, start_broadcast, broadcast_db, shared_databases, pg_admin):
    mine, theirs = shared_databases(), shared_databases()
    await sandbox.set_number(GONE, exists=False)
    for name in ("rec-1", "bc-1", "other-1"):
        await sandbox.create_instance(name)
    recovery = await start_recovery(recovery_db, shared={"dsn": mine}, instances=["rec-1"], evolution={
        "url": sandbox.url, "api_key": sandbox.api_key, "api_version": 2, "webhook_jwt_key": RECOVERY_JWT},
        recovery={"send_timeout": 2, "steps": [{"after": 60, "templates": ["Oi {{first_name}}"]}],
                  "thank_you": {"templates": ["Obrigado {{first_name}}"]}})
    await sending.hook_up(sandbox, recovery, RECOVERY_JWT, "rec-1")
    async with httpx.AsyncClient(base_url=recovery.url) as client:
        await post_order(client, order("order.paid", order_id="O-1", phone="(11) 98765-4321"))
    await wait_rows(recovery_db, "SELECT status FROM outbound_messages", [("invalid",)])
    await wait_rows(mine, KNOWN, [(GONE, "recovery")])
    assert await sandbox.send_attempts() == {GONE: 1}

    # The same tenant's broadcast: GONE is skipped before any sendText, KEPT goes out.
    broadcast = await start_broadcast(broadcast_db, shared={"dsn": mine}, **evolution_config(sandbox))
    await hook_up(sandbox, broadcast, "bc-1")
    shown = await campaign_to(broadcast, GONE, KEPT)
    assert shown["counts"] == {"invalid": 1, "sent": 1}
    assert rows(broadcast_db, "SELECT phone, reason FROM recipients WHERE status = 'invalid'") == [
        (GONE, "the number is not on WhatsApp (remembered; never tried again)")]
    assert await sandbox.send_attempts() == {GONE: 1, KEPT: 1}

    # Another tenant knows nothing of it: its broadcast tries (and learns it for itself only).
    other_db, other = sending.make_database(pg_admin, "broadcast"), None
    try:
        other = await start_broadcast(other_db, tenant="other", shared={"dsn": theirs},
                                      **evolution_config(sandbox, ("other-1",)))
        await hook_up(sandbox, other, "other-1")
        assert (await campaign_to(other, GONE))["counts"] == {"invalid": 1}
        assert (await sandbox.send_attempts())[GONE] == 2
        assert rows(theirs, KNOWN) == [(GONE, "broadcast")]
        assert rows(mine, KNOWN) == [(GONE, "recovery")]
    finally:
        if other is not None:
            other.process.kill()          # idempotent: the fixture's own kill is then a no-op
        sending.drop_database(pg_admin, other_db)
