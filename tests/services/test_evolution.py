"""The Evolution client against the sandbox over real HTTP: bodies, answers and failure classes."""

from __future__ import annotations

import time

import jwt
import pytest
import trio

from oraclewad.services.evolution import (
    EvolutionClient,
    EvolutionError,
    FailureKind,
    flatten_messages,
    sign_webhook,
    verify_webhook,
    webhook_headers,
)
from tests.support.sandbox import Sandbox, SandboxProcess
from tests.support.webhooks import start_receiver

NUMBER = "5511987654321"


def client(sandbox: Sandbox, *, key: str | None = None, **kw) -> EvolutionClient:
    return EvolutionClient(sandbox.url, sandbox.api_key if key is None else key, **kw)


async def failure(call) -> EvolutionError:
    with pytest.raises(EvolutionError) as info:
        await call
    return info.value


async def test_send_text_v2_body_and_answer(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    async with client(sandbox) as evo:
        sent = await evo.send_text("shop-1", NUMBER, "Olá, seu PIX expirou")
    [recorded] = await sandbox.messages()
    assert (recorded["id"], recorded["number"], recorded["text"], recorded["body"]) == (
        sent.message_id, NUMBER, "Olá, seu PIX expirou", "v2")
    assert sent.remote_jid == f"{NUMBER}@s.whatsapp.net"
    assert sent.status == "PENDING"


async def test_send_text_v1_body_when_api_version_1(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    async with client(sandbox, api_version=1) as evo:
        sent = await evo.send_text("shop-1", NUMBER, "oi", delay_ms=10)
    [recorded] = await sandbox.messages()
    assert (recorded["body"], recorded["delay"], recorded["id"]) == ("v1", 10, sent.message_id)


async def test_send_blocks_for_the_delay_and_the_timeout_covers_it(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    # A 0.3 s client timeout would fail a 0.8 s delay if the timeout did not add the delay.
    async with client(sandbox, timeout=0.3) as evo:
        start = time.monotonic()
        await evo.send_text("shop-1", NUMBER, "oi", delay_ms=800)
        assert time.monotonic() - start >= 0.8


async def test_a_send_composing_when_its_instance_is_deleted_is_not_sent(
        sandbox: Sandbox, sandbox_process: SandboxProcess) -> None:
    # A send still "composing" when the sandbox resets between two tests would otherwise land
    # among the next test's messages (seen: 41 numbers for a 40-recipient campaign).
    await sandbox.create_instance("shop-1")
    async with client(sandbox) as evo, trio.open_nursery() as nursery:
        outcome: list[EvolutionError] = []

        async def send() -> None:
            outcome.append(await failure(evo.send_text("shop-1", NUMBER, "oi", delay_ms=500)))

        nursery.start_soon(send)
        await trio.sleep(0.2)
        await trio.to_thread.run_sync(sandbox_process.reset)
    assert (outcome[0].kind, outcome[0].status) == (FailureKind.REJECTED, 404)
    assert await sandbox.messages() == []


async def test_unknown_instance_is_404_before_auth(sandbox: Sandbox) -> None:
    async with client(sandbox, key="wrong") as evo:
        err = await failure(evo.send_text("nope", NUMBER, "oi"))
    assert (err.kind, err.status) == (FailureKind.REJECTED, 404)
    assert err.messages == ['The "nope" instance does not exist']


async def test_bad_or_missing_key_is_unauthorized(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    for key in ("wrong", ""):
        async with client(sandbox, key=key) as evo:
            err = await failure(evo.send_text("shop-1", NUMBER, "oi"))
        assert (err.kind, err.status, err.messages) == (FailureKind.UNAUTHORIZED, 401, ["Unauthorized"])
    assert await sandbox.messages() == []


async def test_instance_token_works_only_on_its_instance(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1", token="tok-1")
    await sandbox.create_instance("shop-2", token="tok-2")
    async with client(sandbox, key="tok-1") as evo:
        await evo.send_text("shop-1", NUMBER, "oi")
        assert [row["name"] for row in await evo.fetch_instances()] == ["shop-1"]
        err = await failure(evo.send_text("shop-2", NUMBER, "oi"))
    assert err.kind == FailureKind.UNAUTHORIZED


async def test_number_not_on_whatsapp_is_permanent(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    await sandbox.set_number(NUMBER, exists=False)
    async with client(sandbox) as evo:
        err = await failure(evo.send_text("shop-1", NUMBER, "oi"))
    assert (err.kind, err.status) == (FailureKind.NOT_ON_WHATSAPP, 400)
    assert err.details == [{"jid": f"{NUMBER}@s.whatsapp.net", "exists": False, "number": NUMBER}]
    assert err.messages == [f"{NUMBER} is not on WhatsApp"]


async def test_connection_closed_before_and_after_the_number_is_cached(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    async with client(sandbox) as evo:
        await sandbox.set_state("shop-1", "connecting")
        first = await failure(evo.send_text("shop-1", NUMBER, "oi"))
        await sandbox.set_state("shop-1", "open")
        await evo.send_text("shop-1", NUMBER, "oi")  # the lookup is cached from here on
        await sandbox.set_state("shop-1", "close", 403)
        second = await failure(evo.send_text("shop-1", NUMBER, "oi"))
    assert (first.kind, first.status, first.messages) == (FailureKind.CONNECTION_CLOSED, 500,
                                                          ["Connection Closed"])
    assert (second.kind, second.status, second.messages) == (FailureKind.CONNECTION_CLOSED, 400,
                                                             ["Error: Connection Closed"])


async def test_socket_fault_is_connection_closed(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    await sandbox.fault("connection_closed", instance="shop-1")
    async with client(sandbox) as evo:
        err = await failure(evo.send_text("shop-1", NUMBER, "oi"))
        assert err.kind == FailureKind.CONNECTION_CLOSED
        await evo.send_text("shop-1", NUMBER, "oi")  # count=1: the next one goes


async def test_server_error_is_transient(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    await sandbox.fault("error500")
    async with client(sandbox) as evo:
        err = await failure(evo.send_text("shop-1", NUMBER, "oi"))
    assert (err.kind, err.status) == (FailureKind.TRANSIENT, 500)
    assert await sandbox.messages() == []


async def test_refused_connection_is_transient() -> None:
    with socket_closed_port() as port:
        async with EvolutionClient(f"http://127.0.0.1:{port}", "k") as evo:
            err = await failure(evo.send_text("shop-1", NUMBER, "oi"))
    assert (err.kind, err.status) == (FailureKind.TRANSIENT, None)


async def test_timeout_without_send_and_after_send_are_both_ambiguous(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    async with client(sandbox, timeout=0.5) as evo:
        await sandbox.fault("hang")
        hung = await failure(evo.send_text("shop-1", NUMBER, "um"))
        assert await sandbox.messages() == []
        await sandbox.fault("accept_then_hang")
        accepted = await failure(evo.send_text("shop-1", NUMBER, "dois"))
    assert hung.kind == accepted.kind == FailureKind.AMBIGUOUS
    # The sandbox did send the second: a sender must mark it uncertain, never resend it.
    assert [m["text"] for m in await sandbox.messages()] == ["dois"]


async def test_blank_text_is_rejected(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    async with client(sandbox) as evo:
        err = await failure(evo.send_text("shop-1", NUMBER, "   "))
    assert (err.kind, err.status, err.messages) == (FailureKind.REJECTED, 400, ["Text is required"])


async def test_schema_errors_arrive_as_a_list_of_lists(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    async with client(sandbox) as evo:
        err = await failure(evo.set_webhook("shop-1", "ftp://x", {}, []))
    assert (err.kind, err.status) == (FailureKind.REJECTED, 400)
    assert err.messages == ['instance.webhook.url does not match pattern "^https?://"']


def test_flatten_accepts_every_envelope_shape() -> None:
    assert flatten_messages("Unauthorized") == (["Unauthorized"], [])
    assert flatten_messages(["a", "b"]) == (["a", "b"], [])
    assert flatten_messages([["x requires y"], ["z"]]) == (["x requires y", "z"], [])
    texts, details = flatten_messages([{"jid": "1@s.whatsapp.net", "exists": False, "number": "1"}])
    assert texts == ["1 is not on WhatsApp"] and details[0]["exists"] is False


async def test_html_error_page_is_classified_by_status(nursery: trio.Nursery) -> None:
    # A reverse proxy in front of Evolution answers HTML; the status alone decides.
    proxy = await start_receiver(nursery)
    proxy.status, proxy.content_type = 502, b"text/html"
    proxy.answer = b"<html><body>Bad Gateway</body></html>"
    async with EvolutionClient(proxy.url.rsplit("/webhooks", 1)[0], "k") as evo:
        err = await failure(evo.connection_state("shop-1"))
    assert (err.kind, err.status) == (FailureKind.TRANSIENT, 502)
    assert "Bad Gateway" in err.messages[0]


async def test_create_connect_and_state(sandbox: Sandbox) -> None:
    async with client(sandbox) as evo:
        created = await evo.create_instance("new-1")
        assert created["instance"]["status"] == "close" and created["hash"]
        assert await evo.connection_state("new-1") == "close"
        info = await evo.connect("new-1", number=NUMBER)
        assert info.state == "connecting" and info.code and info.pairing_code
        assert info.base64.startswith("data:image/png;base64,")
        assert (await evo.connect("new-1")).pairing_code is None  # only with the number
        assert await evo.connection_state("new-1") == "connecting"
        await sandbox.set_state("new-1", "open")
        assert (await evo.connect("new-1")).state == "open"
        [row] = await evo.fetch_instances("new-1")
        assert (row["name"], row["connectionStatus"]) == ("new-1", "open")


async def test_create_duplicate_is_403_even_without_a_valid_key(sandbox: Sandbox) -> None:
    await sandbox.create_instance("shop-1")
    for key in (sandbox.api_key, "wrong"):
        async with client(sandbox, key=key) as evo:
            err = await failure(evo.create_instance("shop-1"))
        assert (err.kind, err.status) == (FailureKind.REJECTED, 403)
        assert err.messages == ['This name "shop-1" is already in use.']
    async with client(sandbox, key="wrong") as evo:
        assert (await failure(evo.create_instance("other"))).kind == FailureKind.UNAUTHORIZED


async def test_fetch_unknown_instance_is_rejected(sandbox: Sandbox) -> None:
    async with client(sandbox) as evo:
        err = await failure(evo.fetch_instances("ghost"))
    assert (err.kind, err.status) == (FailureKind.REJECTED, 404)


async def test_webhook_set_find_and_signed_events(sandbox: Sandbox, nursery: trio.Nursery) -> None:
    receiver = await start_receiver(nursery)
    await sandbox.create_instance("shop-1")
    key = "jwt-key-for-test-" + "x" * 32
    async with client(sandbox) as evo:
        assert await evo.find_webhook("shop-1") == {}
        await evo.set_webhook("shop-1", receiver.url, webhook_headers(key),
                              ["MESSAGES_UPDATE", "CONNECTION_UPDATE", "MESSAGES_UPSERT"])
        stored = await evo.find_webhook("shop-1")
        assert (stored["url"], stored["enabled"], stored["webhookByEvents"]) == (receiver.url, True, False)
        sent = await evo.send_text("shop-1", NUMBER, "oi")
    ack = await receiver.wait_for(lambda r: r.body["event"] == "messages.update")
    assert (ack.body["data"]["keyId"], ack.body["data"]["status"]) == (sent.message_id, "SERVER_ACK")
    assert verify_webhook(ack.headers["authorization"], key)
    assert not verify_webhook(ack.headers["authorization"], "another-key-" + "y" * 32)
    assert "jwt_key" not in ack.headers  # the key itself never travels

    await sandbox.ack(sent.message_id, "READ")
    read = await receiver.wait_for(lambda r: r.body["data"].get("status") == "READ")
    assert read.body["data"]["keyId"] == sent.message_id

    await sandbox.set_state("shop-1", "close", 402)
    closed = await receiver.wait_for(lambda r: r.body["event"] == "connection.update")
    assert (closed.body["data"]["state"], closed.body["data"]["statusReason"]) == ("close", 402)

    await sandbox.inject_upsert("shop-1", "5511911112222", "SAIR", lid=True)
    upsert = await receiver.wait_for(lambda r: r.body["event"] == "messages.upsert")
    key_fields = upsert.body["data"]["key"]
    assert key_fields["remoteJid"].endswith("@lid") and key_fields["addressingMode"] == "lid"
    assert key_fields["remoteJidAlt"] == "5511911112222@s.whatsapp.net"
    assert not receiver.events("send.message")  # not subscribed


async def test_static_header_webhook_and_retry_after_a_5xx(sandbox: Sandbox, nursery: trio.Nursery) -> None:
    receiver = await start_receiver(nursery)
    receiver.status = 503
    await sandbox.create_instance("shop-1", webhook={"url": receiver.url,
                                                     "headers": {"authorization": "Bearer static"},
                                                     "events": ["CONNECTION_UPDATE"]})
    await sandbox.set_state("shop-1", "connecting")
    first = await receiver.wait_for(lambda r: r.body["data"]["state"] == "connecting")
    assert first.headers["authorization"] == "Bearer static"
    receiver.status = 200
    with trio.fail_after(5):
        while len([r for r in receiver.received if r.body["data"]["state"] == "connecting"]) < 2:
            await trio.sleep(0.05)  # the sandbox retries (0.2 s first delay in tests)


def test_verify_webhook_rejects_expired_unsigned_and_foreign_tokens() -> None:
    now = 1_800_000_000
    k = "k" * 32
    good = sign_webhook(k, now=now)
    assert verify_webhook(f"Bearer {good}", k, now=now + 10)
    assert not verify_webhook(f"Bearer {good}", k, now=now + 600 + 31)  # expired
    assert not verify_webhook(good, k, now=now)  # no Bearer scheme
    assert not verify_webhook(None, k)
    assert not verify_webhook(f"Bearer {good}", "", now=now)
    other_app = jwt.encode({"iat": now, "exp": now + 600, "app": "x", "action": "webhook"}, k)
    assert not verify_webhook(f"Bearer {other_app}", k, now=now)
    none_alg = jwt.encode({"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"},
                          None, algorithm="none")
    assert not verify_webhook(f"Bearer {none_alg}", k, now=now)


async def test_v1_server_bodies_for_create_and_webhook(nursery: trio.Nursery) -> None:
    process = SandboxProcess.start("--api-version", "1")
    try:
        async with EvolutionClient(process.url, process.api_key, api_version=1) as evo:
            await evo.create_instance("old-1", webhook_url="http://127.0.0.1:9/hook")
            await evo.set_webhook("old-1", "http://127.0.0.1:9/other", {}, ["MESSAGES_UPDATE"])
            assert (await evo.find_webhook("old-1"))["url"] == "http://127.0.0.1:9/other"
            [row] = await evo.fetch_instances("old-1")
            assert row["instance"]["instanceName"] == "old-1"
    finally:
        process.stop()
    assert process.process.poll() is not None


class socket_closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


async def test_the_shared_tls_context_still_refuses_an_untrusted_certificate(tmp_path) -> None:
    # Every client shares one verifying context (built once in a fork template): sharing must not
    # weaken it. A self-signed certificate for the very address is refused in the handshake.
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    send, handshakes = trio.open_memory_channel[str](10)

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
            await send.send("completed")
        except trio.BrokenResourceError:
            await send.send("refused by the client")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        for _ in range(2):      # the second client reuses the first one's context
            async with EvolutionClient(f"https://127.0.0.1:{port}", "key", timeout=10) as evo:
                await failure(evo.send_text("shop-1", NUMBER, "x"))
            assert await handshakes.receive() == "refused by the client"
        nursery.cancel_scope.cancel()
