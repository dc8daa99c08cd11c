"""An idle recovery sender on trio's MockClock: the real app in this process (its real sender and
anti-ban engine, the real database, the real sandbox over HTTP), with every database call counted.
With nothing pending it makes no call between its slow sweeps, yet a new order.paid is sent at
once, and a `sending` row another process left behind still turns uncertain."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from oraclewad.services.evolution import EvolutionClient
from oraclewad.services.instances import InstanceStates
from oraclewad.services.recovery.app import build_app
from oraclewad.services.recovery.sender import IDLE_SWEEP_EVERY, SWEEP_EVERY
from oraclewad.services.runtime import ServiceContext
from tests.recovery.support import order, post_order, recovery_config, rows


async def _real_wait(done: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Until done() (awaited if it returns an awaitable), in real time: virtual time stands still."""
    deadline = time.monotonic() + timeout
    while True:
        got = done()
        if hasattr(got, "__await__"):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.to_thread.run_sync(time.sleep, 0.005)


async def _sleeping(sender: Any) -> None:
    """Until the sender sleeps: every task blocked lets a wake-up due begin its round, whose
    database calls then take real time in threads."""
    await trio.testing.wait_all_tasks_blocked()
    await _real_wait(lambda: sender._wake_at != float("-inf"), "the sender to sleep")


async def idle_steps(mock_clock: Any, sender: Any, seconds: float) -> None:
    """Virtual time on by `seconds` in SWEEP_EVERY steps (each a poll of the database before),
    letting the sender finish whatever each step woke it for."""
    for _ in range(round(seconds / SWEEP_EVERY)):
        mock_clock.jump(SWEEP_EVERY)
        await _sleeping(sender)


async def test_an_idle_sender_makes_no_database_call_between_slow_sweeps_yet_sends_at_once(
        mock_clock, recovery_db, sandbox):
    base = time.time() - trio.current_time()

    def clock() -> float:
        return base + trio.current_time()

    calls: list[str] = []
    pool = ConnectionPool(recovery_db, min_size=0, max_size=4, open=True)
    client = EvolutionClient(sandbox.url, sandbox.api_key)
    instances = InstanceStates(["rec-1"], client, clock=clock)
    await sandbox.create_instance("rec-1")
    instances.apply_connection_update({"instance": "rec-1", "state": "open"})
    config = recovery_config(recovery_db, instances=["rec-1"],
                             recovery={"typing_delay_ms": 0, "min_gap": 0, "send_timeout": 2})
    ctx = ServiceContext(tenant="imperio", service="recovery", release="t", display_name="Império",
                         config=config, pg=pool, redis=None, redis_prefix="imperio:recovery:",
                         metrics=CollectorRegistry(), limiter=trio.CapacityLimiter(4), evolution=client,
                         instances=instances)
    real_db = ctx.db

    async def counted(fn: Callable[..., Any], *args: Any, wait: float | None = None) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real_db(fn, *args, wait=wait)

    ctx.db = counted  # type: ignore[method-assign]
    app = build_app(ctx, clock=clock)
    sender = app.state.recovery.sender
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recovery")
    try:
        async with trio.open_nursery() as running:
            running.start_soon(sender.run)
            await _sleeping(sender)
            settled = len(calls)
            assert settled >= 2, calls      # the first sweep and claim ran at start
            # Idle: virtual time moves on in short steps (each was a poll of the database before),
            # and not one database call is made until the slow sweep is due.
            await idle_steps(mock_clock, sender, IDLE_SWEEP_EVERY - SWEEP_EVERY)
            assert calls[settled:] == []
            # A new order.paid: its thank-you goes at once, with no virtual time passing.
            at = trio.current_time()
            response = await post_order(http, order("order.paid", order_id="I-1"),
                                        at_ms=int(clock() * 1000))
            assert response.status_code == 202, response.text
            await _real_wait(sandbox.messages, "the thank-you in the sandbox")
            (sent,) = await sandbox.messages()
            assert sent["number"] == "5511987654321" and "Maria" in sent["text"]
            assert trio.current_time() == at
            await _real_wait(lambda: rows(recovery_db, "SELECT status FROM outbound_messages") == [("sent",)],
                             "the send recorded")
            # Idle again once a sweep has seen the send settled. The slow sweep after it falls on
            # a step boundary (5 s busy + 30 s), where the wall-clock float rounding decides which
            # step runs it: step past it, then expect a quiet stretch a step shorter than the wait.
            await idle_steps(mock_clock, sender, IDLE_SWEEP_EVERY + 2 * SWEEP_EVERY)
            quiet = len(calls)
            await idle_steps(mock_clock, sender, IDLE_SWEEP_EVERY - 2 * SWEEP_EVERY)
            assert calls[quiet:] == []
            # A `sending` row no poke announces (a swap's other process died mid-send): the slow
            # sweep still turns it uncertain, and it is never resent.
            with pool.connection() as conn:
                conn.execute("UPDATE outbound_messages SET status = 'sending', provider_message_id = NULL,"
                             " claimed_at = now() - interval '1 hour', claimed_by = 'gone:1:1'")
            await idle_steps(mock_clock, sender, IDLE_SWEEP_EVERY)
            assert rows(recovery_db, "SELECT status FROM outbound_messages") == [("uncertain",)]
            assert len(await sandbox.messages()) == 1
            running.cancel_scope.cancel()
    finally:
        await http.aclose()
        await client.aclose()
        pool.close()

