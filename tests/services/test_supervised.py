"""A real child under the daemon contract: fd 3, NOTIFY_SOCKET with SO_PASSCRED, admin socket, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import stat

import httpx
import trio

from tests.services.helpers import base_env, listening_socket, write_config

SECRET = "whsec-Do-Not-Log-4f1c9a"


def supervised_env(workdir, notify, config: dict, **extra: str) -> dict[str, str]:
    return base_env(
        OWA_TENANT="imperio", OWA_SERVICE="recovery", OWA_CONFIG=str(write_config(workdir, config)),
        OWA_ADMIN_SOCKET=str(workdir / "admin.sock"), NOTIFY_SOCKET=notify.address,
        LISTEN_FDS="1", LISTEN_FDNAMES="http", **extra,
    )


def admin_client(workdir) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(workdir / "admin.sock"))
    return httpx.AsyncClient(transport=transport, base_url="http://admin")


async def test_lifecycle_under_the_daemon_contract(launch, notify, workdir):
    listener = listening_socket()
    port = listener.getsockname()[1]
    config = {
        "tenant": "imperio", "service": "recovery", "display_name": "Império", "release": "test-1",
        # Ignored: the inherited socket wins over http.host/port.
        "http": {"host": "127.0.0.1", "port": 1},
        "webhook_secret": SECRET, "evolution": {"api_key": "evo-key-not-for-logs"},
    }
    env = supervised_env(workdir, notify, config, WATCHDOG_USEC="150000")
    child = launch(env, listen=listener)

    await notify.wait_for("READY=1", child)
    ready = await child.wait_log("ready")
    assert ready["http"] == [f"http://127.0.0.1:{port}"]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        index = await client.get("/", params={"token": "query-token-not-logged"})
        missing = await client.get("/no/such/thing")
    assert index.status_code == 200
    body = index.json()
    assert body["service"] == "recovery" and body["tenant"] == "imperio" and body["release"] == "test-1"
    assert body["display_name"] == "Império" and body["status"] == "ready"
    assert {"method": "POST", "path": "/webhooks/orders"}.items() <= body["endpoints"][0].items()
    assert missing.status_code == 404 and missing.json()["status"] == 404

    admin_path = workdir / "admin.sock"
    assert stat.S_IMODE(os.stat(admin_path).st_mode) == 0o600
    async with admin_client(workdir) as admin:
        health = await admin.get("/healthz")
        metrics = await admin.get("/metrics")
    assert health.status_code == 200
    h = health.json()
    assert h["status"] == "ok" and h["pid"] == child.pid and h["release"] == "test-1"
    assert (h["tenant"], h["service"]) == ("imperio", "recovery") and h["uptime_s"] >= 0
    for name in ("postgres", "redis", "schema"):
        assert h["checks"][name]["ok"] and h["checks"][name]["skipped"], h
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'oraclewa_http_requests_total{method="GET",route="/",status="200"} 1.0' in text
    assert 'oraclewa_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert re.search(r'oraclewa_http_request_duration_seconds_count\{route="/",status="200"\} 1\.0', text)
    # The daemon adds tenant/service and reads /proc itself: the child's registry has neither.
    assert "tenant=" not in text and "process_resident_memory_bytes" not in text
    assert "_created" not in text

    # WATCHDOG_USEC=150000 -> a ping every 50 ms, from the child's own pid.
    await notify.wait_for("WATCHDOG=1", child, count=3)

    child.signal(signal.SIGTERM)
    await notify.wait_for("STOPPING=1", child)
    assert await child.wait() == 0
    assert not admin_path.exists()  # removed: it was still ours
    assert {m for m, _ in notify.messages} == {"READY=1", "WATCHDOG=1", "STOPPING=1"}
    assert all(pid == child.pid for _, pid in notify.messages)

    records = child.records  # every stdout line is one JSON object
    assert all({"ts", "level", "channel", "msg", "tenant", "service"} <= r.keys() for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in records)
    access = [r for r in records if r["channel"] == "http" and r["msg"] == "request"]
    assert [(r["route"], r["status"]) for r in access] == [("/", 200), ("<unmatched>", 404)]
    assert access[0]["path"] == "/"
    out = child.stdout + child.stderr.decode()
    for secret in (SECRET, "evo-key-not-for-logs", "query-token-not-logged"):
        assert secret not in out
    listener.close()


async def _in_flight(launch, notify_path, workdir):
    """A child with POST /echo waiting for the rest of its body, and the client stream."""
    listener = listening_socket()
    env = supervised_env(workdir, notify_path, {"tenant": "imperio", "release": "slow"})
    child = launch(env, module="tests.services.slow_service", listen=listener)
    await notify_path.wait_for("READY=1", child)
    stream = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
    await child.wait_log("echo started")
    return listener, child, stream


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_sigterm_drains_the_request_in_flight(launch, notify_path, workdir):
    listener, child, stream = await _in_flight(launch, notify_path, workdir)

    child.signal(signal.SIGTERM)
    await notify_path.wait_for("STOPPING=1", child)
    await stream.send_all(b"world")  # the request completes after the stop began
    with trio.fail_after(10):
        response = await _read_all(stream)  # EOF after it: no keep-alive while stopping
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"helloworld"
    assert await child.wait() == 0
    assert (await child.wait_log("stopped"))["level"] == "info"
    listener.close()


async def test_second_signal_stops_without_draining(launch, notify_path, workdir):
    listener, child, stream = await _in_flight(launch, notify_path, workdir)

    child.signal(signal.SIGTERM)
    await notify_path.wait_for("STOPPING=1", child)
    child.signal(signal.SIGINT)
    assert await child.wait() == 0
    with trio.fail_after(5):
        assert await _read_all(stream) == b""  # closed without an answer
    assert json.dumps(await child.wait_log("second signal: stopping without waiting for requests"))
    listener.close()
