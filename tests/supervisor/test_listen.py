"""The service's listening socket is the daemon's: bound once, handed over as fd 3, kept across
restarts, so a client arriving while no process runs waits in the backlog instead of being refused."""

from __future__ import annotations

import os
import signal
import socket

import trio

from tests.supervisor.conftest import policy, status_fields


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def ask_pid(port: int, sent: trio.Semaphore | None = None) -> int:
    """Connect, send a line, read the answering pid. `sent` is released once the line is out."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)     # raises if refused
    async with stream:
        await stream.send_all(b"who\n")
        if sent is not None:
            sent.release()
        data = b""
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(100)
            assert chunk, "connection closed without an answer"
            data += chunk
    return int(data)


async def clients_waiting(nursery: trio.Nursery, port: int, count: int, answers: list[int]) -> None:
    """Start `count` clients and return once every one is connected and has sent its request."""
    sent = trio.Semaphore(0, max_value=count)

    async def client() -> None:
        answers.append(await ask_pid(port, sent))

    for _ in range(count):
        nursery.start_soon(client)
    for _ in range(count):
        await sent.acquire()


async def test_same_socket_across_restarts_and_the_backlog_holds_clients(sup, make_spec):
    port = free_port()
    sup.apply({"t/web": make_spec("t/web", listen=("127.0.0.1", port))})
    first = await sup.wait_state("t/web", "running", 10)
    assert sup.listen_address("t/web") == ("127.0.0.1", port)
    with trio.fail_after(5):
        assert await ask_pid(port) == first.pid

    # Connect while no process runs: the daemon's socket still listens, so the kernel completes
    # the handshake and the request waits in the backlog for the next process.
    await sup.stop("t/web")
    answers: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await clients_waiting(nursery, port, 3, answers)
            second = await sup.start("t/web")
    assert answers == [second.pid] * 3
    assert status_fields(second.message)["ino"] == status_fields(first.message)["ino"]

    third = await sup.restart("t/web")
    assert status_fields(third.message)["ino"] == status_fields(first.message)["ino"]
    with trio.fail_after(5):
        assert await ask_pid(port) == third.pid


async def test_clients_arriving_during_a_crash_restart_are_served_by_the_next_process(sup, make_spec):
    port = free_port()
    sup.apply({"t/web": make_spec("t/web", listen=("127.0.0.1", port),
                                  policy=policy(backoff_initial=0.8))})
    first = await sup.wait_state("t/web", "running", 10)
    answers: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            os.kill(first.pid, signal.SIGKILL)
            await sup.wait_state("t/web", "backoff", 5)
            await clients_waiting(nursery, port, 20, answers)
            assert sup.status("t/web").state == "backoff"       # nobody was accepting meanwhile
    second = sup.status("t/web")
    assert answers == [second.pid] * 20 and second.pid != first.pid


async def test_port_in_use_is_a_clear_failure_retried_with_backoff(sup, make_spec):
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    sup.apply({"t/web": make_spec("t/web", listen=("127.0.0.1", port),
                                  policy=policy(backoff_initial=0.1, backoff_max=0.2))})
    status = await sup.wait_state("t/web", "backoff", 10)
    assert status.message == f"port {port} on 127.0.0.1 is in use by another program"
    assert status.pid is None
    blocker.close()
    running = await sup.wait_state("t/web", "running", 10)
    with trio.fail_after(5):
        assert await ask_pid(port) == running.pid


async def test_changing_the_listen_address_moves_the_socket(sup, make_spec):
    old, new = free_port(), free_port()
    sup.apply({"t/web": make_spec("t/web", listen=("127.0.0.1", old))})
    await sup.wait_state("t/web", "running", 10)
    sup.apply({"t/web": make_spec("t/web", listen=("127.0.0.1", new))})
    await sup.wait_state("t/web", "stopping", 5)
    running = await sup.wait_state("t/web", "running", 10)
    with trio.fail_after(5):
        assert await ask_pid(new) == running.pid
    # The old port is free again: binding it works.
    with socket.socket() as s:
        s.bind(("127.0.0.1", old))
