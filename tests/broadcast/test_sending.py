"""Campaigns go out through the Evolution sandbox: the real broadcast child, the real anti-ban
engine (its waits shrunk), the real sandbox over HTTP both ways, counted in the sandbox."""

from __future__ import annotations

import signal
from collections import Counter

import trio

from tests.broadcast.support import FAST_ANTIBAN, evolution_config, hook_up, rows, wait_messages, wait_rows

SLOW = {**FAST_ANTIBAN, "delay_min": 0.15, "delay_max": 0.25}   # "composing" long enough to act mid-way


def csv_of(n: int, start: int = 0) -> str:
    lines = (f"55119{start + i:08d};Cliente {i} Souza;C{i}\n" for i in range(n))
    return "telefone;nome;cupom\n" + "".join(lines)


async def campaign(admin, n: int, templates=("{Oi|Olá} {{first_name}}, seu cupom: {{cupom}}",)) -> int:
    cid = (await admin.post("/campaigns", json={"name": "c", "templates": list(templates)})).json()["id"]
    answer = (await admin.post(f"/campaigns/{cid}/recipients", json={"csv": csv_of(n)})).json()
    assert answer["accepted"] == n, answer
    return cid


async def wait_status(admin, cid: int, status: str, timeout: float = 30.0) -> dict:
    with trio.fail_after(timeout):
        while (shown := (await admin.get(f"/campaigns/{cid}")).json())["status"] != status:
            await trio.sleep(0.2)
    return shown


async def test_test_message_then_start_sends_each_recipient_its_stable_text_once(sandbox, start_broadcast,
                                                                                broadcast_db):
    await sandbox.create_instance("bc-1")
    child = await start_broadcast(broadcast_db, **evolution_config(sandbox))
    await hook_up(sandbox, child, "bc-1")
    async with child.admin() as admin:
        cid = await campaign(admin, 5)
        test = await admin.post(f"/campaigns/{cid}/test", json={"phone": "(11) 91111-2222"})
        assert test.status_code == 200, test.text
        assert test.json()["text"].endswith("Cliente, seu cupom: C0")
        (first,) = await sandbox.messages()
        assert (first["number"], first["text"]) == ("5511911112222", test.json()["text"])
        started = await admin.post(f"/campaigns/{cid}/start", json={})
        assert started.json()["status"] == "running" and started.json()["eta"] is not None
        shown = await wait_status(admin, cid, "completed")
    assert (shown["sent"], shown["pending"], shown["progress"]) == (5, 0, 1.0)
    sent = [m for m in await sandbox.messages() if m["number"] != "5511911112222"]
    assert sorted(m["number"] for m in sent) == [f"55119{i:08d}" for i in range(5)]
    stored = dict(rows(broadcast_db, "SELECT phone, body FROM recipients"))
    assert {m["number"]: m["text"] for m in sent} == stored      # what was kept is what went out
    assert all(t.endswith(f"Cliente, seu cupom: C{int(p[-1])}") for p, t in stored.items())
    async with child.admin() as admin:
        metrics = (await admin.get("/metrics")).text
    assert f'oraclewa_broadcast_campaign_messages{{campaign="{cid}",status="sent"}}' in metrics


async def test_opted_out_numbers_get_nothing_at_import_or_at_send_time_lid_included(
        sandbox, start_broadcast, broadcast_db, shared_dsn):
    await sandbox.create_instance("bc-1")
    child = await start_broadcast(broadcast_db, shared={"dsn": shared_dsn}, **evolution_config(sandbox))
    await hook_up(sandbox, child, "bc-1")
    # Opted out before the import (through recovery, say): suppressed at import.
    await sandbox.inject_upsert("bc-1", "5511900000001", "PARAR")
    await wait_rows(shared_dsn, "SELECT phone FROM suppressions", [("5511900000001",)])
    async with child.admin() as admin:
        created = await admin.post("/campaigns", json={"name": "o", "templates": "Oi {{first_name}}"})
        cid = created.json()["id"]
        answer = (await admin.post(f"/campaigns/{cid}/recipients", json={"csv": csv_of(4)})).json()
        assert (answer["accepted"], answer["suppressed"]) == (3, 1)
        assert answer["suppressed_lines"] == [{"line": 3, "phone": "5511900000001"}]
        # Opts out after the import, LID-addressed ("Sáir!"): stopped at send time.
        await sandbox.inject_upsert("bc-1", "5511900000002", " Sáir! ", lid=True)
        await wait_rows(shared_dsn, "SELECT count(*) FROM suppressions", [(2,)])
        await admin.post(f"/campaigns/{cid}/start", json={})
        shown = await wait_status(admin, cid, "completed")
    assert shown["counts"] == {"sent": 2, "suppressed": 1}
    numbers = {m["number"] for m in await sandbox.messages()}
    assert numbers == {"5511900000000", "5511900000003"}


async def test_pause_edit_add_and_resume_where_it_stopped_then_cancel(sandbox, start_broadcast, broadcast_db):
    await sandbox.create_instance("bc-1")
    child = await start_broadcast(broadcast_db, **evolution_config(sandbox), antiban=SLOW)
    await hook_up(sandbox, child, "bc-1")
    async with child.admin() as admin:
        cid = await campaign(admin, 12, ["A {{first_name}}"])
        edited = await admin.patch(f"/campaigns/{cid}", json={"templates": "B {{first_name}}"})
        assert edited.status_code == 200
        await admin.post(f"/campaigns/{cid}/start", json={})
        await wait_messages(sandbox, 3)
        paused = (await admin.post(f"/campaigns/{cid}/pause", json={})).json()
        assert paused["status"] == "paused"
        busy = await admin.patch(f"/campaigns/{cid}", json={"templates": "C {{first_name}} {{cupom}}"})
        assert busy.status_code == 200
        more = (await admin.post(f"/campaigns/{cid}/recipients", json={"csv": csv_of(2, 100)})).json()
        assert more["accepted"] == 2
        # Paused: the send in flight, if any, records its outcome, and nothing more goes.
        await wait_rows(broadcast_db, "SELECT count(*) FROM recipients WHERE status = 'sending'", [(0,)])
        before = len(await sandbox.messages())
        await trio.sleep(1)
        assert len(await sandbox.messages()) == before
        await admin.post(f"/campaigns/{cid}/resume", json={})
        await wait_status(admin, cid, "completed")
        texts = [m["text"] for m in await sandbox.messages()]
        assert len(texts) == 14 and len(set(m["number"] for m in await sandbox.messages())) == 14
        # Drawn again from the edited templates: every text not yet tried.
        assert {t.split()[0] for t in texts[:before]} == {"B"}
        assert {t.split()[0] for t in texts[before:]} == {"C"}
        assert (await admin.post(f"/campaigns/{cid}/pause", json={})).status_code == 409
        other = await campaign(admin, 3)
        cancelled = (await admin.post(f"/campaigns/{other}/cancel", json={})).json()
        assert cancelled["counts"] == {"cancelled": 3}
        assert (await admin.post(f"/campaigns/{other}/start", json={})).status_code == 409


async def test_a_ban_mid_campaign_removes_that_instance_and_the_others_carry_on(sandbox, start_broadcast,
                                                                                broadcast_db):
    for name in ("bc-1", "bc-2", "bc-3"):
        await sandbox.create_instance(name)
    child = await start_broadcast(broadcast_db, **evolution_config(sandbox, ("bc-1", "bc-2", "bc-3")),
                                  antiban=SLOW)
    await hook_up(sandbox, child, "bc-1", "bc-2", "bc-3")
    async with child.admin() as admin:
        cid = await campaign(admin, 45)
        await admin.post(f"/campaigns/{cid}/start", json={})
        await wait_messages(sandbox, 9)
        await sandbox.set_state("bc-2", "close", 401)      # banned
        banned_at = len(await sandbox.messages())
        shown = await wait_status(admin, cid, "completed", timeout=60)
    sent = await sandbox.messages()
    per_number = Counter(m["number"] for m in sent)
    assert len(per_number) == 45 and set(per_number.values()) == {1}, "lost or sent twice"
    late = Counter(m["instance"] for m in sent[banned_at + 1:])   # one send may have been in flight
    assert late["bc-2"] == 0 and late["bc-1"] > 0 and late["bc-3"] > 0
    assert shown["counts"] == {"sent": 45}


async def test_kill_9_of_the_child_mid_campaign_resumes_with_no_duplicate(sandbox, start_broadcast,
                                                                           broadcast_db):
    for name in ("bc-1", "bc-2"):
        await sandbox.create_instance(name)
    config = {**evolution_config(sandbox, ("bc-1", "bc-2")), "antiban": SLOW}
    child = await start_broadcast(broadcast_db, **config)
    await hook_up(sandbox, child, "bc-1", "bc-2")
    async with child.admin() as admin:
        cid = await campaign(admin, 40)
        await admin.post(f"/campaigns/{cid}/start", json={})
    await wait_messages(sandbox, 10)
    child.process.signal(signal.SIGKILL)
    await child.process.wait()
    dead = [r[0] for r in rows(broadcast_db, "SELECT DISTINCT claimed_by FROM recipients"
                                             " WHERE claimed_by IS NOT NULL")]
    again = await start_broadcast(broadcast_db, **config)    # the daemon restarts it; here the test
    await hook_up(sandbox, again, "bc-1", "bc-2")
    # The dead process's leases hold its instances until they expire (its sends could still land:
    # the gap + the send timeout + 30 s), then the rest goes, each send recording its outcome (on
    # a loaded machine the last ones are still on their way when nothing is pending any more).
    await wait_rows(broadcast_db, "SELECT count(*) FROM recipients WHERE status = 'pending'"
                                  " OR (status = 'sending' AND claimed_by <> ALL(%s))", [(0,)],
                    timeout=150, args=(dead,))
    await trio.sleep(1)
    sent = await sandbox.messages()
    per_number = Counter(m["number"] for m in sent)
    assert set(per_number.values()) == {1}, "a recipient got two messages"
    statuses = Counter(s for (s,) in rows(broadcast_db, "SELECT status FROM recipients"))
    # Killed mid-send: at most one per instance is in doubt (sending/uncertain), never resent.
    in_doubt = statuses["sending"] + statuses["uncertain"]
    assert in_doubt <= 2 and statuses["sent"] + in_doubt == 40
    assert len(per_number) in range(40 - in_doubt, 41)


async def test_sigterm_mid_send_finishes_and_records_the_send_on_its_way(sandbox, start_broadcast,
                                                                         broadcast_db):
    """A restart or a release swap stops the old process with SIGTERM while a send is composing:
    that send completes and is recorded `sent`, not left to be swept `uncertain` (never resent, so
    lost to the campaign)."""
    await sandbox.create_instance("bc-1")
    config = {**evolution_config(sandbox), "antiban": {**FAST_ANTIBAN, "delay_min": 0.8, "delay_max": 0.9}}
    child = await start_broadcast(broadcast_db, **config)
    await hook_up(sandbox, child, "bc-1")
    async with child.admin() as admin:
        cid = await campaign(admin, 3)
        await admin.post(f"/campaigns/{cid}/start", json={})
    await wait_rows(broadcast_db, "SELECT count(*) FROM recipients WHERE status = 'sending'", [(1,)])
    child.process.signal(signal.SIGTERM)
    assert await child.process.wait() == 0
    statuses = Counter(s for (s,) in rows(broadcast_db, "SELECT status FROM recipients"))
    assert statuses["sending"] == statuses["uncertain"] == 0, statuses
    assert statuses["sent"] >= 1 and statuses["sent"] + statuses["pending"] == 3, statuses
    sent = await sandbox.messages()
    assert len(sent) == statuses["sent"] and len({m["number"] for m in sent}) == len(sent)


async def test_an_ambiguous_send_is_uncertain_never_resent_and_an_ack_resolves_it(sandbox, start_broadcast,
                                                                                  broadcast_db):
    await sandbox.create_instance("bc-1")   # no webhook yet: the sandbox's own SERVER_ACK cannot reach us
    child = await start_broadcast(broadcast_db, **evolution_config(sandbox), broadcast={"send_timeout": 1})
    await sandbox.fault("accept_then_hang", instance="bc-1")
    async with child.admin() as admin:
        cid = await campaign(admin, 1)
        await admin.post(f"/campaigns/{cid}/start", json={})
        await wait_rows(broadcast_db, "SELECT status FROM recipients", [("uncertain",)])
        await trio.sleep(3)    # several sender rounds: not sent again, and the campaign is done
        assert len(await sandbox.messages()) == 1
        assert (await admin.get(f"/campaigns/{cid}")).json()["counts"] == {"uncertain": 1}
    await hook_up(sandbox, child, "bc-1")
    (sent,) = await sandbox.messages()
    await sandbox.ack(sent["id"], "DELIVERY_ACK")
    await wait_rows(broadcast_db, "SELECT status, provider_message_id FROM recipients",
                    [("delivered", sent["id"])])
