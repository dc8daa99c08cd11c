"""`oraclectl campaign ...` end to end: oraclectl -> the real daemon (gRPC ServiceCall) -> the
tenant's real broadcast child (admin socket) -> the Evolution sandbox. No curl anywhere."""

from __future__ import annotations

import json

import httpx

from tests.harness import unique_id, wait_for, write_tenant

CSV = "\ufeffTelefone;Nome;Cidade\n11987654321;Ana Souza;Recife\n123;Bob;Rio\n(11) 98765-4321;Ana;Rio\n"


def test_an_operator_runs_a_campaign_with_oraclectl_only(make_daemon, sandbox_process, tmp_path) -> None:
    sandbox_process.reset()
    daemon = make_daemon()
    tid = unique_id()
    key = daemon.root / "evolution.key"
    key.write_text(sandbox_process.api_key)
    key.chmod(0o600)
    httpx.post(f"{sandbox_process.url}/_sandbox/instances", json={"name": f"{tid}-b", "state": "open"},
               timeout=10).raise_for_status()
    evolution = f'[evolution]\nurl = "{sandbox_process.url}"\napi_key_file = "{key}"\n'
    # No standby, manual messages or business hours: the test message may go at once, at any hour.
    antiban = ('[antiban]\nstandby_hours = 0.0\nmanual_messages = 0\n'
               '[antiban.working_hours]\nstart = "00:00"\nend = "24:00"\n')
    path = write_tenant(daemon.root, tid, f'[broadcast]\ninstances = ["{tid}-b"]\n{evolution}{antiban}')
    path.write_text(path.read_text().replace('services = "all"', 'services = ["broadcast"]'))
    daemon.start()
    wait_for(lambda: all(r["ready"] for r in daemon.ctl_json("status", tid)), what="broadcast ready")

    created = daemon.ctl("campaign", "create", tid, "Natal", "-t", "{Oi|Olá} {{first_name}} de {{cidade}}!")
    assert "created campaign 1 (Natal)" in created.stdout
    contacts = tmp_path / "contatos.csv"
    contacts.write_text(CSV, encoding="utf-8")
    imported = daemon.ctl("campaign", "import", tid, "1", str(contacts)).stdout
    assert "1 accepted, 1 invalid, 1 duplicate, 0 suppressed" in imported
    assert "line 3: '123' not a valid phone number" in imported
    assert "line 4" in imported and "same number as line 2" in imported
    assert "{{cidade}}" in imported

    wait_for(lambda: daemon.ctl_json("instances", tid)["instances"][0]["state"] == "open",
             what="the instance seen open")
    test = daemon.ctl("campaign", "test", tid, "1", "11 91111-2222").stdout
    assert "sent to 5511911112222" in test and "Ana de Recife!" in test
    messages = httpx.get(f"{sandbox_process.url}/_sandbox/messages", timeout=10).json()
    assert [(m["number"], m["text"][-14:]) for m in messages] == [("5511911112222", "Ana de Recife!")]
    # Paced like any send: a second one at once waits for the instance's gap (30-120 s of silence).
    again = daemon.ctl("campaign", "test", tid, "1", "11 91111-2222", check=False)
    assert again.returncode == 1 and "no instance may send the test now" in again.stderr
    assert "gap until" in again.stderr and "try again after" in again.stderr

    bad = daemon.ctl("campaign", "edit", tid, "1", "-t", "Oi {{first_name", check=False)
    assert bad.returncode == 1 and "templates" in bad.stderr and "never closed" in bad.stderr
    started = daemon.ctl("campaign", "start", tid, "1").stdout
    assert "campaign 1 'Natal': running" in started
    shown = json.loads(daemon.ctl("--json", "campaign", "show", tid, "1").stdout)
    assert shown["status"] == "running" and shown["total"] == 1
    assert "eta" in shown and "eta_reason" in shown       # the engine's forecast
    assert "paused" in daemon.ctl("campaign", "pause", tid, "1").stdout
    refused = daemon.ctl("campaign", "pause", tid, "1", check=False)
    assert refused.returncode == 1 and "only a running or scheduled one pauses" in refused.stderr
    assert "running" in daemon.ctl("campaign", "resume", tid, "1").stdout
    assert "cancelled" in daemon.ctl("campaign", "cancel", tid, "1").stdout
    listed = daemon.ctl("campaign", "list", tid).stdout
    assert "Natal" in listed and "cancelled" in listed
    missing = daemon.ctl("campaign", "show", tid, "7", check=False)
    assert missing.returncode == 1 and "no campaign 7" in missing.stderr
