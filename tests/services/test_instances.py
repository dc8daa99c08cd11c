"""Instances per service, end to end: a real daemon, its real children and the sandbox over HTTP.

oraclectl -> daemon (ServiceCall) -> the owning service's admin socket -> Evolution (the sandbox),
and Evolution's signed events back to the service.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import httpx
import pytest

from oraclectl.client import Client, Refused, Target
from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad.services.evolution import sign_webhook
from tests.harness import Daemon, unique_id, wait_for, write_tenant
from tests.support.sandbox import SandboxProcess

PHONE = "5511999990000"


@pytest.fixture(scope="module")
def pairing_sandbox() -> Iterator[SandboxProcess]:
    """A sandbox whose instances pair themselves half a second after /instance/connect."""
    process = SandboxProcess.start("--auto-pair", "0.5")
    yield process
    process.stop()


def evo(sandbox: SandboxProcess, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{sandbox.url}{path}", json=body, headers={"apikey": sandbox.api_key},
                         timeout=10)


def tenant_with_instances(daemon: Daemon, sandbox: SandboxProcess, tid: str) -> None:
    key = daemon.root / "evolution.key"
    key.write_text(sandbox.api_key)
    key.chmod(0o600)
    write_tenant(daemon.root, tid, f'[recovery]\ninstances = ["{tid}-r"]\n'
                                   f'[broadcast]\ninstances = ["{tid}-b"]\n'
                                   f'[evolution]\nurl = "{sandbox.url}"\napi_key_file = "{key}"\n')


def health(daemon: Daemon, tid: str) -> dict[str, dict]:
    result = daemon.ctl("--json", "health", tid, check=False)
    return {row["service"]: row for row in json.loads(result.stdout)}


def instances(daemon: Daemon, tid: str) -> dict[str, dict]:
    result = daemon.ctl("--json", "instances", tid, check=False)
    return {row["name"]: row for row in json.loads(result.stdout)["instances"]}


def test_instances_connect_health_and_signed_events(make_daemon, pairing_sandbox: SandboxProcess) -> None:
    sandbox = pairing_sandbox
    daemon = make_daemon()
    tid = unique_id()
    httpx.post(f"{sandbox.url}/_sandbox/instances",
               json={"name": f"{tid}-r", "state": "open"}).raise_for_status()
    tenant_with_instances(daemon, sandbox, tid)
    daemon.start()
    wait_for(lambda: all(r["ready"] for r in daemon.ctl_json("status", tid)), what="services ready")

    # Each service sees its own instance: recovery's is open, broadcast's is not on Evolution yet.
    rows = wait_for(lambda: (r := instances(daemon, tid)) and r[f"{tid}-b"]["state"] == "missing" and r,
                    what="the first poll")
    assert (rows[f"{tid}-r"]["service"], rows[f"{tid}-r"]["state"], rows[f"{tid}-r"]["can_send"]) == (
        "recovery", "open", True)
    assert (rows[f"{tid}-b"]["service"], rows[f"{tid}-b"]["can_send"]) == ("broadcast", False)
    table = daemon.ctl("instances", tid).stdout
    assert f"{tid}-b" in table and "broadcast" in table and "missing" in table

    # No instance of broadcast can send: health is unhealthy for it and says why; recovery is fine.
    result = daemon.ctl("health", tid, check=False)
    assert result.returncode == 1
    assert f"{tid}-b: missing (cannot send" in result.stdout
    rows = health(daemon, tid)
    assert rows["broadcast"]["status"] == "failing" and not rows["broadcast"]["checks"]["instances"]["ok"]
    assert rows["recovery"]["status"] == "ok"

    # ... and its status says so: a service that cannot send is not shown as running.
    state = lambda: {r["service"]: r for r in daemon.ctl_json("status", tid)}  # noqa: E731
    wait_for(lambda: state()["broadcast"]["state"] == "unhealthy", what="broadcast shown unhealthy")
    assert "instances: no instance can send" in state()["broadcast"]["message"]

    # connect (the service is unhealthy but answers): creates it, points its webhook at broadcast
    # with a JWT key, shows the QR + pairing code, waits for open.
    result = daemon.ctl("instances", "connect", tid, f"{tid}-b", "--number", PHONE, timeout=60)
    out = result.stdout
    assert f"created {tid}-b on Evolution" in out
    assert "▀" in out or "█" in out  # the QR code, drawn in the terminal
    assert "pairing code" in out and f"{tid}-b is connected (open)" in out
    hook = evo(sandbox, "GET", f"/webhook/find/{tid}-b").json()
    port = next(r["port"] for r in daemon.ctl_json("status", tid) if r["service"] == "broadcast")
    assert hook["url"] == f"http://127.0.0.1:{port}/webhooks/evolution"
    secrets_dir = daemon.root / "state" / "secrets"
    secret = (secrets_dir / f"{tid.lower()}.broadcast.evolution-webhook.key").read_text()
    assert hook["headers"] == {"jwt_key": secret.strip()}
    assert {"MESSAGES_UPDATE", "CONNECTION_UPDATE", "MESSAGES_UPSERT"} <= set(hook["events"])
    wait_for(lambda: daemon.ctl("health", tid, check=False).returncode == 0, what="both services healthy")
    wait_for(lambda: state()["broadcast"]["state"] == "running", what="broadcast running again")

    # The anti-ban engine's view: first seen open -> standby; the operator's attestation is kept
    # in broadcast's database (through the daemon, like connect).
    rows = wait_for(lambda: (r := instances(daemon, tid)) and r[f"{tid}-b"].get("antiban", {}).get("stage")
                    == "standby" and r, what="broadcast's instance in standby")
    assert "standby until" in rows[f"{tid}-b"]["antiban"]["why_not"]
    table = daemon.ctl("instances", tid).stdout
    assert "STAGE" in table and "NEXT SLOT" in table and "standby until" in table
    attested = daemon.ctl("instances", "attest", tid, f"{tid}-b", "--network", "4g", "--groups", "3",
                          "--recharge", "2026-01-10").stdout
    assert f"{tid}-b (broadcast): attested network=4g groups=3 recharge=2026-01-10" in attested
    row = instances(daemon, tid)[f"{tid}-b"]["antiban"]
    assert row["attested"] == {"network": "4g", "groups": 3, "recharge": "2026-01-10"}
    assert "the recharge of 2026-01-10 is over 31 days old" in row["why_not"]   # older than a month
    bad = daemon.ctl("instances", "attest", tid, f"{tid}-b", "--recharge", "10/01/2026", check=False)
    assert bad.returncode == 1 and "recharge: the date of the last monthly recharge, YYYY-MM-DD" in bad.stderr

    # A ban arrives as a signed connection.update: broadcast takes it out of rotation at once.
    httpx.post(f"{sandbox.url}/_sandbox/instances/{tid}-b/state",
               json={"state": "close", "statusReason": 402}).raise_for_status()
    rows = wait_for(lambda: (h := health(daemon, tid))["broadcast"]["status"] == "failing" and h,
                    what="the ban to reach broadcast")
    assert "temporarily banned" in rows["broadcast"]["checks"]["instances"]["instances"][f"{tid}-b"]["detail"]
    deliveries = httpx.get(f"{sandbox.url}/_sandbox/webhooks").json()
    assert any(d["url"] == hook["url"] and d["status"] == 200 for d in deliveries)

    # Unsigned or wrongly signed events are refused.
    url = hook["url"]
    event = {"event": "connection.update", "instance": f"{tid}-b", "data": {"state": "open"}}
    assert httpx.post(url, json=event).status_code == 401
    forged = {"authorization": f"Bearer {sign_webhook('not-the-key-' + 'x' * 32)}"}
    assert httpx.post(url, json=event, headers=forged).status_code == 401
    assert health(daemon, tid)["broadcast"]["status"] == "failing"


def test_own_instances_and_the_service_call_proxy(make_daemon, pairing_sandbox) -> None:
    daemon = make_daemon()
    tid = unique_id()
    tenant_with_instances(daemon, pairing_sandbox, tid)
    daemon.start()
    wait_for(lambda: all(r["ready"] for r in daemon.ctl_json("status", tid)), what="services ready")
    # Each service has the Evolution settings and only its own instance; one webhook key per service.
    rows = wait_for(lambda: (r := instances(daemon, tid)) and r[f"{tid}-r"]["state"] == "missing" and r,
                    what="the first poll")  # a wrong key would read "unauthorized"
    assert {(n, r["service"]) for n, r in rows.items()} == {(f"{tid}-r", "recovery"),
                                                           (f"{tid}-b", "broadcast")}
    secrets_dir = daemon.root / "state" / "secrets"
    key_files = [secrets_dir / f"{tid.lower()}.{s}.evolution-webhook.key" for s in ("recovery", "broadcast")]
    assert len({k.read_text() for k in key_files}) == 2
    assert all(len(k.read_text().strip()) >= 32 and k.stat().st_mode & 0o077 == 0 for k in key_files)

    result = daemon.ctl("instances", "connect", tid, "stranger", check=False)
    assert result.returncode == 1
    assert "'stranger' is not an instance of" in result.stderr and "[broadcast] instances" in result.stderr
    assert evo(pairing_sandbox, "GET", "/instance/fetchInstances?instanceName=stranger").status_code == 404

    # The proxy underneath: answers what the service answered, refuses what it cannot route.
    with Client(Target(socket=str(daemon.socket_path))) as client:
        answer = client.service_call(pb.ServiceCallRequest(tenant=tid, service="recovery",
                                                           method="GET", path="/instances"))
        assert answer.status == 200 and json.loads(answer.body_json)["service"] == "recovery"
        missing = client.service_call(pb.ServiceCallRequest(tenant=tid, service_enum=pb.SERVICE_RECOVERY,
                                                            path="/instances/stranger"))
        assert missing.status == 404 and "not one of the recovery instances" in missing.body_json
        for request, field in ((pb.ServiceCallRequest(tenant=tid, service="shop", path="/"), "service"),
                               (pb.ServiceCallRequest(tenant=tid, service_enum=99, path="/"), "service"),
                               (pb.ServiceCallRequest(tenant=tid, service="recovery", path="instances"),
                                "path"),
                               (pb.ServiceCallRequest(tenant=tid, service="recovery", method="TRACE",
                                                      path="/"), "method")):
            with pytest.raises(Refused) as info:
                client.service_call(request)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details
        daemon.ctl("stop", tid, "broadcast")
        with pytest.raises(Refused) as info:
            client.service_call(pb.ServiceCallRequest(tenant=tid, service="broadcast", path="/instances"))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    result = daemon.ctl("instances", tid, check=False)
    assert result.returncode == 1 and "broadcast" in result.stderr  # says which service it could not ask
    assert f"{tid}-r" in result.stdout


def test_tenant_add_writes_each_services_instances_and_prints_the_next_step(make_daemon) -> None:
    daemon = make_daemon()
    daemon.start()
    tid = unique_id()
    result = daemon.ctl("tenant", "add", tid, "--recovery-instance", f"{tid}-1", "--broadcast-instance",
                        f"{tid}-2", "--no-wait")
    assert "next: pair each WhatsApp number" in result.stdout
    assert f"oraclectl instances connect {tid} {tid}-1" in result.stdout
    assert f"oraclectl instances connect {tid} {tid}-2" in result.stdout
    text = (daemon.root / "tenants.d" / f"{tid}.toml").read_text()
    assert f'[recovery]\ninstances = [\n    "{tid}-1",\n]' in text or f'instances = ["{tid}-1"]' in text
    other = unique_id()
    result = daemon.ctl("tenant", "add", other, "--recovery-instance", "same", "--broadcast-instance", "same",
                        check=False)
    assert result.returncode == 1 and "'same' is also in [recovery] instances" in result.stderr
    assert not (daemon.root / "tenants.d" / f"{other}.toml").exists()
    result = daemon.ctl("tenant", "add", other, "--instance", "x", check=False)
    assert result.returncode == 2 and "--recovery-instance NAME or --broadcast-instance NAME" in result.stderr
    result = daemon.ctl("tenant", "add", other, "--no-wait")
    assert f"[recovery] instances = [\"{other}-1\"]" in result.stdout and "oraclectl reload" in result.stdout
