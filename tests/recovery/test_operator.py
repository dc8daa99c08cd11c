"""What the operator and the shop owner do with oraclectl, on a real daemon with the sandbox:
`tenant secrets` (its curl example, pasted, becomes a message), `tenant rotate-secret` (the old
secret works during the overlap, then not), `recovery` (the report's figures are what was sent)."""

from __future__ import annotations

import json
import re
import subprocess

import httpx

from tests.harness import Daemon, unique_id, wait_for, write_tenant
from tests.recovery.support import encode, hmac_headers, order
from tests.support.sandbox import Sandbox

EXAMPLE_PHONE = "5511987654321"   # the phone of oraclectl's curl example, normalised


TENANT = """
[recovery]
instances = ["{tid}-r"]
typing_delay_ms = 0
min_gap = 0
send_window = ["00:00", "23:59"]
[[recovery.steps]]
after = 1
templates = ["Oi {{first_name}}, o PIX de {{total}} expirou"]
[recovery.thank_you]
templates = ["Obrigado, {{first_name}}! {{total}} ({{product}})"]
[evolution]
url = "{url}"
api_key_file = "{key}"
"""


def tenant_with_sandbox(daemon: Daemon, sandbox: Sandbox, tid: str) -> None:
    key = daemon.root / "evolution.key"
    key.write_text(sandbox.api_key)
    key.chmod(0o600)
    body = TENANT.replace("{tid}", tid).replace("{url}", sandbox.url).replace("{key}", str(key))
    path = write_tenant(daemon.root, tid, body)
    path.write_text(path.read_text().replace('services = "all"', 'services = ["recovery"]'))


def secrets_of(daemon: Daemon, tid: str) -> dict:
    return json.loads(daemon.ctl("--json", "tenant", "secrets", tid).stdout)


def recovery_ready(daemon: Daemon, tid: str) -> None:
    wait_for(lambda: all(r["ready"] and r["state"] == "running" for r in daemon.ctl_json("status", tid)),
             what="recovery ready", timeout=60)


def post(url: str, doc: dict, secret: str) -> httpx.Response:
    body = encode(doc)
    return httpx.post(url, content=body, headers=hmac_headers(body, secret), timeout=10)


def answer(url: str, doc: dict, secret: str) -> int:
    """The status, or 0 while the service restarts (a rotation restarts it, a moment later)."""
    try:
        return post(url, doc, secret).status_code
    except httpx.TransportError:
        return 0


async def sent_to(sandbox: Sandbox, number: str) -> list[dict]:
    return [m for m in await sandbox.messages() if m["number"] == number]


def test_secrets_curl_example_rotation_and_the_report(make_daemon, sandbox: Sandbox) -> None:
    import trio

    daemon = make_daemon()
    tid = unique_id()
    trio.run(sandbox.create_instance, f"{tid}-r")
    tenant_with_sandbox(daemon, sandbox, tid)
    daemon.start()
    recovery_ready(daemon, tid)

    # tenant secrets: URL, secret, token, where they are kept; the curl example works pasted in bash.
    shown = daemon.ctl("tenant", "secrets", tid).stdout
    creds = secrets_of(daemon, tid)
    url, secret = creds["webhook_url"], creds["secret"]
    assert url.endswith("/webhooks/orders") and secret.startswith("whsec_") and secret in shown
    assert creds["static_token"] and not creds["static_token_enabled"] and "off:" in shown
    assert creds["file"].endswith(".webhook.json") and creds["file"] in shown
    example = shown[shown.index("body='"):]
    result = subprocess.run(["bash", "-c", example], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and '"accepted"' in result.stdout, result.stdout + result.stderr
    thanks = wait_for(lambda: trio.run(sent_to, sandbox, EXAMPLE_PHONE), what="the example's thank-you",
                      timeout=60)
    assert [m["text"] for m in thanks] == ["Obrigado, Ana! R$ 197,90 (Curso Online)"]

    # The report: one order recovered after its reminder, one reminded and not paid, one only paid.
    for oid in ("A", "B"):
        assert post(url, order("order.expired", f"{tid}-{oid}", phone=f"1199999000{ord(oid) % 10}",
                               total=1234.56), secret).status_code == 202
    wait_for(lambda: len([m for m in trio.run(sandbox.messages) if "expirou" in m["text"]]) == 2,
             what="both reminders", timeout=60)
    assert post(url, order("order.paid", f"{tid}-A", phone="11999990005", total=1234.56),
                secret).status_code == 202
    wait_for(lambda: len(trio.run(sandbox.messages)) == 4, what="the second thank-you", timeout=60)
    report = json.loads(daemon.ctl("--json", "recovery", tid, "--since", "1h").stdout)
    assert (report["orders_expired"], report["orders_reminded"], report["orders_recovered"]) == (2, 2, 1)
    assert float(report["revenue_recovered"]) == 1234.56 and report["conversion"] == 0.5
    assert report["messages"].get("sent", 0) + report["messages"].get("delivered", 0) == 4
    assert report["uncertain"] == 0 and report["invalid_numbers"] == 0
    table = daemon.ctl("recovery", tid).stdout
    assert "R$ 1.234,56" in table and "50.0%" in table and re.search(r"recovered:\s+1\b", table)

    # rotate-secret: the old secret keeps working during the overlap; with --overlap 0 it stops now.
    rotated = daemon.ctl("tenant", "rotate-secret", tid, "--overlap", "1h").stdout
    new = secrets_of(daemon, tid)
    assert new["secret"] != secret and new["secret"] in rotated and len(new["previous_until"]) == 1
    # The restart happens just after the answer: the new secret works once the new process does.
    wait_for(lambda: answer(url, order("order.expired", f"{tid}-D"), new["secret"]) == 202,
             what="the restarted service with the new secret", timeout=60)
    assert answer(url, order("order.expired", f"{tid}-C"), secret) == 202
    daemon.ctl("tenant", "rotate-secret", tid, "--overlap", "0")
    newest = secrets_of(daemon, tid)["secret"]
    wait_for(lambda: answer(url, order("order.expired", f"{tid}-E"), newest) == 202,
             what="the restarted service with the newest secret", timeout=60)
    assert answer(url, order("order.expired", f"{tid}-F"), new["secret"]) == 401
    assert answer(url, order("order.expired", f"{tid}-G"), secret) == 401

    bad = daemon.ctl("tenant", "rotate-secret", tid, "--overlap", "soon", check=False)
    assert bad.returncode == 2 and "is not a duration" in bad.stderr
    missing = daemon.ctl("recovery", "nobody", check=False)
    assert missing.returncode == 1 and "nobody" in missing.stderr
