"""Postgres/Redis at start (unreachable -> exit 69 naming host and reason) and in /healthz."""

from __future__ import annotations

import signal

import httpx
import pytest
import trio

from tests.services.helpers import base_env, free_port, write_config

PASSWORD = "pw-Never-In-Logs-93b"


async def test_postgres_unreachable_exits_69_naming_host(launch, workdir):
    port = free_port()
    config = {"tenant": "imperio", "http": {"port": 0},
              "postgres": {"dsn": f"postgresql://imperio_recovery:{PASSWORD}@127.0.0.1:{port}/imperio_recovery"}}
    child = launch(base_env(OWA_CONFIG=str(write_config(workdir, config))))
    assert await child.wait() == 69
    message = child.stderr.decode()
    assert message.startswith(f"postgres: cannot connect to 127.0.0.1:{port} (database imperio_recovery")
    assert "Connection refused" in message
    assert child.records[-1]["level"] == "error"
    assert PASSWORD not in child.stdout + message


async def test_redis_unreachable_exits_69_naming_host(launch, workdir):
    port = free_port()
    config = {"tenant": "imperio", "http": {"port": 0},
              "redis": {"url": f"redis://:{PASSWORD}@127.0.0.1:{port}/0", "username": "imperio_recovery"}}
    child = launch(base_env(OWA_CONFIG=str(write_config(workdir, config))))
    assert await child.wait() == 69
    message = child.stderr.decode()
    assert message.startswith(f"redis: cannot use redis://:***@127.0.0.1:{port}/0 as user imperio_recovery")
    assert "Connection refused" in message
    assert PASSWORD not in child.stdout + message


async def test_redis_failure_is_reported_while_postgres_still_hangs(launch, workdir, nursery):
    """PostgreSQL and Redis are connected side by side, and the first failure ends the start at
    once: a refused Redis is not hidden behind a hung PostgreSQL's 5 s connect timeout."""
    hung_pg = FakeRedis(mute=True)      # accepts the connection, never answers the startup packet
    await nursery.start(hung_pg.run)
    port = free_port()
    config = {"tenant": "imperio", "http": {"port": 0},
              "postgres": {"dsn": f"postgresql://imperio_recovery@127.0.0.1:{hung_pg.port}/imperio_recovery"},
              "redis": {"url": f"redis://127.0.0.1:{port}/0", "username": "imperio_recovery"}}
    child = launch(base_env(OWA_CONFIG=str(write_config(workdir, config))))
    with trio.fail_after(10):
        await hung_pg.connected.wait()
    assert await child.wait(timeout=3) == 69     # psycopg would still wait 5 s for the hung one
    assert child.stderr.decode().startswith(f"redis: cannot use redis://127.0.0.1:{port}/0")
    await hung_pg.stop()


class FakeRedis:
    """Just enough RESP for PING (and AUTH): lets a test take Redis away from a running child."""

    def __init__(self, mute: bool = False) -> None:
        self.mute = mute  # accept connections, never answer: a hung server
        self.scope = trio.CancelScope()
        self.port = 0
        self.streams: list[trio.SocketStream] = []
        self.connected = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.streams.append(stream)
        self.connected.set()
        buf = b""
        async with stream:
            while chunk := await stream.receive_some():
                if self.mute:
                    continue
                buf += chunk
                while (command := _take_command(buf)) is not None:
                    args, buf = command
                    reply = b"+PONG\r\n" if args[0].upper() == b"PING" else b"+OK\r\n"
                    await stream.send_all(reply)

    async def stop(self) -> None:
        self.scope.cancel()
        for stream in self.streams:
            await stream.aclose()


def _take_command(buf: bytes) -> tuple[list[bytes], bytes] | None:
    """One RESP array of bulk strings off the front of buf, or None if incomplete."""
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None
    head, rest = buf.split(b"\r\n", 1)
    args = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line[1:])
        if len(rest) < size + 2:
            return None
        args.append(rest[:size])
        rest = rest[size + 2:]
    return args, rest


async def test_while_a_store_is_reached_the_admin_socket_answers_but_no_request_is_served(
        launch, workdir, nursery, notify):
    """The stores are reached beside the servers' start, but the public port opens only once
    they were: a hung Redis leaves it closed (no READY), while /healthz already says why."""
    hung = FakeRedis(mute=True)
    await nursery.start(hung.run)
    port = free_port()
    config = {"tenant": "imperio", "http": {"port": port}, "redis": {"url": f"redis://127.0.0.1:{hung.port}/0"}}
    sock = workdir / "a.sock"
    child = launch(base_env(OWA_CONFIG=str(write_config(workdir, config)), OWA_ADMIN_SOCKET=str(sock),
                            NOTIFY_SOCKET=notify.address))
    with trio.fail_after(10):
        await hung.connected.wait()     # blocked in its start-up PING
        while not sock.exists():
            await trio.sleep(0.01)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)),
                                 base_url="http://admin") as admin:
        health = await admin.get("/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["checks"]["redis"]["ok"] is False
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    assert notify.count("READY=1", child.pid) == 0
    child.signal(signal.SIGTERM)
    assert await child.wait(timeout=4) == 0
    await hung.stop()


async def test_healthz_degraded_when_redis_goes_away(launch, workdir, nursery):
    fake = FakeRedis()
    await nursery.start(fake.run)
    config = {"tenant": "imperio", "release": "r1", "http": {"port": 0},
              "redis": {"url": f"redis://127.0.0.1:{fake.port}/0", "username": "imperio_recovery",
                        "password": PASSWORD}}
    env = base_env(OWA_CONFIG=str(write_config(workdir, config)), OWA_ADMIN_SOCKET=str(workdir / "a.sock"))
    child = launch(env)
    await child.wait_log("ready")
    transport = httpx.AsyncHTTPTransport(uds=str(workdir / "a.sock"))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as admin:
        before = await admin.get("/healthz")
        await fake.stop()
        after = await admin.get("/healthz")
        missing = await admin.get("/nope")
    assert before.status_code == 200 and before.json()["checks"]["redis"]["ok"] is True
    assert before.json()["checks"]["redis"]["detail"] == "PONG"
    assert after.status_code == 503
    body = after.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False and "ConnectionError" in body["checks"]["redis"]["detail"]
    assert body["checks"]["postgres"]["skipped"]
    assert missing.status_code == 404 and missing.json()["status"] == 404

    child.signal(signal.SIGTERM)
    assert await child.wait() == 0
    assert PASSWORD not in child.stdout + child.stderr.decode()


async def test_sigterm_during_startup_stops_cleanly(launch, workdir, nursery, notify):
    """Stuck waiting for a dependency at start: SIGTERM still gives STOPPING=1 and exit 0, no READY."""
    hung = FakeRedis(mute=True)
    await nursery.start(hung.run)
    config = {"tenant": "imperio", "http": {"port": 0}, "redis": {"url": f"redis://127.0.0.1:{hung.port}/0"}}
    child = launch(base_env(OWA_CONFIG=str(write_config(workdir, config)), NOTIFY_SOCKET=notify.address))
    with trio.fail_after(10):
        await hung.connected.wait()  # the child is blocked in its start-up PING
    child.signal(signal.SIGTERM)
    await notify.wait_for("STOPPING=1", child)
    assert await child.wait(timeout=4) == 0  # well before redis-py's 5 s socket timeout
    assert notify.count("READY=1", child.pid) == 0
    assert await child.wait_log("stopped before ready")
    await hung.stop()
