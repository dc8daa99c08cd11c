"""Reminder sequences on an injected clock: the recovery app in this process (its real sender, the
real database, the real sandbox over HTTP) with the service's clock under the test's control, so
hours pass in an instant and each step's send time can be checked to the second. (trio's
MockClock cannot be used here: its autojump fires while the sender waits on real sockets.)"""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import trio
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from oraclewad.services.evolution import EvolutionClient
from oraclewad.services.instances import InstanceStates
from oraclewad.services.recovery.app import build_app
from oraclewad.services.runtime import ServiceContext
from tests.recovery.support import SECRET, hmac_headers, order, rows

SP = ZoneInfo("America/Sao_Paulo")
START = datetime(2026, 12, 1, 18, 30, tzinfo=SP).timestamp()   # a Tuesday, 18:30 in São Paulo


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts, SP).strftime("%d %H:%M")


async def run_app(nursery, recovery_db, sandbox, plan, *, state="open"):
    clock = Clock(START)
    pool = ConnectionPool(recovery_db, min_size=0, max_size=4, open=True)
    client = EvolutionClient(sandbox.url, sandbox.api_key)
    instances = InstanceStates(["rec-1"], client, clock=clock)
    instances.apply_connection_update({"instance": "rec-1", "state": state})
    ctx = ServiceContext(tenant="imperio", service="recovery", release="t", display_name="Império",
                         config={"webhook_secret": SECRET, "recovery": plan, "instances": ["rec-1"]},
                         pg=pool, redis=None, redis_prefix="imperio:recovery:", metrics=CollectorRegistry(),
                         limiter=trio.CapacityLimiter(4), evolution=client, instances=instances)
    app = build_app(ctx, clock=clock)
    for fn, args in ctx._tasks:
        nursery.start_soon(fn, *args)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recovery")

    async def post(doc):
        body = json.dumps(doc).encode()
        return await http.post("/webhooks/orders", content=body,
                               headers=hmac_headers(body, at_ms=int(clock() * 1000)))

    service = app.state.recovery

    async def advance(seconds: float, step: float = 60.0) -> None:
        """Move the service's clock on, minute by minute, letting the sender catch up each time."""
        end = clock.now + seconds
        while clock.now < end:
            clock.now = min(end, clock.now + step)
            service.poke()
            await trio.sleep(0.02)
        await trio.sleep(0.3)

    return advance, post, instances


async def test_three_steps_run_at_their_times_wait_for_the_window_and_stop_at_paid(
        nursery, recovery_db, sandbox):
    await sandbox.create_instance("rec-1")
    plan = {"typing_delay_ms": 0, "min_gap": 0, "send_window": ["08:00", "21:00"],
            "steps": [{"after": 60, "templates": ["1 {{first_name}}"]},
                      {"after": 3 * 3600, "templates": ["2 {{first_name}}"]},
                      {"after": 24 * 3600, "templates": ["3 {{first_name}}"]}],
            "thank_you": {"templates": ["obrigado {{first_name}}"]}}
    advance, post, _ = await run_app(nursery, recovery_db, sandbox, plan)
    assert (await post(order(order_id="S-1"))).status_code == 202
    # Step 1 at 18:31; step 2 was due at 21:30, after the window: it goes when the window opens.
    await advance(15 * 3600)
    sent = rows(recovery_db, "SELECT step, extract(epoch from sent_at) FROM outbound_messages "
                             "WHERE status IN ('sent', 'delivered', 'read') ORDER BY step")
    # Each step goes in the first sender rounds after its time (the clock moves a minute a round).
    due = [datetime(2026, 12, 1, 18, 31, tzinfo=SP).timestamp(),
           datetime(2026, 12, 2, 8, 0, tzinfo=SP).timestamp()]
    assert [step for step, _ in sent] == [1, 2]
    for (_, at), when in zip(sent, due, strict=True):
        assert when <= float(at) <= when + 300, (local(float(at)), local(when))
    assert [m["text"] for m in await sandbox.messages()] == ["1 Maria", "2 Maria"]
    # Paid before step 3 (due 02 18:30): step 3 is cancelled, the thank-you goes at once.
    assert (await post(order("order.paid", order_id="S-1"))).status_code == 202
    await advance(20 * 3600)
    assert rows(recovery_db, "SELECT kind, status, reason FROM outbound_messages ORDER BY id") == [
        ("reminder_1", "sent", None), ("reminder_2", "sent", None),
        ("reminder_3", "cancelled", "order paid"), ("thank_you", "sent", None)]
    assert [m["text"] for m in await sandbox.messages()] == ["1 Maria", "2 Maria", "obrigado Maria"]
    assert rows(recovery_db, "SELECT recovered FROM orders") == [(True,)]


async def test_a_step_older_than_max_age_is_dropped_with_the_reason(nursery, recovery_db, sandbox):
    await sandbox.create_instance("rec-1", state="connecting")
    plan = {"typing_delay_ms": 0, "min_gap": 0, "steps": [{"after": 60}]}
    advance, post, instances = await run_app(nursery, recovery_db, sandbox, plan, state="connecting")
    assert (await post(order(order_id="M-1"))).status_code == 202
    await advance(3 * 3600)
    assert rows(recovery_db, "SELECT status FROM outbound_messages") == [("pending",)]
    await advance(3600 + 120)   # past 60 s + 4 h
    instances.apply_connection_update({"instance": "rec-1", "state": "open"})
    await advance(30)
    (status, reason), = rows(recovery_db, "SELECT status, reason FROM outbound_messages")
    assert status == "dropped" and reason.startswith("max_age")
    assert await sandbox.messages() == []
