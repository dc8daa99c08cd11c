"""Days of schedule on trio's MockClock: a sender loop that reserves, plays the gap as the send's
delay (as Evolution does), releases, and sleeps until the engine's Wait says."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import date

import psycopg
import trio
from trio.testing import MockClock

from oraclewad.services.antiban import Engine, Lease, Wait
from tests.antiban.support import T0, engine, states


class Driver:
    """One sender process: `pending` messages, at most one send per lease, no send latency."""

    def __init__(self, e: Engine, conn: psycopg.Connection, pending: int) -> None:
        self.e, self.conn, self.pending = e, conn, pending
        self.sent: list[tuple[str, float]] = []     # (instance, landed at)
        self.wake = trio.Event()

    @staticmethod
    def now() -> float:
        return T0 + trio.current_time()

    async def run(self, until: float) -> None:
        async with trio.open_nursery() as nursery:
            while self.pending and self.now() < until:
                got = self.e.reserve(self.conn, self.now(), text=f"msg {self.pending}")
                if isinstance(got, Lease):
                    self.pending -= 1
                    nursery.start_soon(self._send, got)
                    continue
                assert isinstance(got, Wait)
                wait = min(got.until if got.until is not None else until, until) - self.now()
                with trio.move_on_after(max(wait, 0.001)):
                    await self.wake.wait()
                self.wake = trio.Event()

    async def _send(self, lease: Lease) -> None:
        await trio.sleep(lease.delay_ms / 1000)          # Evolution's "composing" delay
        self.sent.append((lease.instance, self.now()))
        self.e.release(self.conn, lease, None, self.now())
        self.wake.set()


def per_day(e: Engine, sent: list[tuple[str, float]]) -> dict[date, int]:
    return dict(sorted(Counter(e.cal.day(t) for _, t in sent).items()))


def caps(conn: psycopg.Connection, instance: str) -> dict[date, tuple[int, int]]:
    rows = conn.execute("SELECT day, stage, cap FROM antiban_days WHERE instance = %s ORDER BY day",
                        (instance,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


async def test_multi_day_warm_up_then_an_idle_instance_drops_a_stage(
        conn: psycopg.Connection, autojump_clock: MockClock) -> None:
    e = engine(["a"])
    e.observe(conn, Driver.now())                 # first seen open now: 24 h standby
    for i in range(5):
        e.note_upsert(conn, "a", f"manual-{i}", True, Driver.now())
    driver = Driver(e, conn, pending=10_000)
    start_day = e.cal.day(T0)
    await driver.run(until=e.cal.day_start(date.fromordinal(start_day.toordinal() + 6)))

    days = per_day(e, driver.sent)
    drawn = caps(conn, "a")
    # Nothing during standby (the first day), then day1, day2, day3, mature: each day exactly its
    # cap (the driver always has messages), each cap inside its stage's range.
    assert start_day not in days
    ranges = {1: (10, 20), 2: (30, 40), 3: (50, 60), 4: (70, 100)}
    for n, (day, count) in enumerate(days.items(), start=1):
        stage, cap = drawn[day]
        assert stage == min(n, 4) and count == cap
        assert ranges[stage][0] <= cap <= ranges[stage][1]
    assert len(days) == 5
    # Every send inside business hours, the gaps at least 30 s.
    lands = [t for _, t in driver.sent]
    assert all(8 <= e.cal.local(t).hour < 22 for t in lands)
    assert min(b - a for a, b in itertools.pairwise(lands)) >= 30

    # Four days without a send: back one stage (mature -> day3) when it is next looked at.
    await trio.sleep_until(trio.current_time() + 4 * 86400)
    row = e.explain(conn, Driver.now())[0]
    assert row["stage"] == "day3" and 50 <= row["cap"] <= 60


async def test_forecast_lands_within_ten_percent_of_the_real_finish(
        conn: psycopg.Connection, autojump_clock: MockClock) -> None:
    names = ["a", "b", "c"]
    view = states(names)
    e = engine(names, {"standby_hours": 0, "manual_messages": 0}, view=view)
    pending = 400
    start = Driver.now()
    forecast = e.forecast(conn, start, pending)
    assert forecast.finish_at is not None and sum(forecast.per_instance.values()) == pending
    driver = Driver(e, conn, pending)
    await driver.run(until=start + 30 * 86400)
    finished = max(t for _, t in driver.sent)
    assert len(driver.sent) == pending
    error = abs(forecast.finish_at - finished) / (finished - start)
    assert error < 0.10, (forecast.finish_at, finished)
    # Counts per instance follow the forecast too.
    assert Counter(n for n, _ in driver.sent) == Counter(forecast.per_instance)


async def test_a_ban_mid_schedule_removes_the_instance_and_the_others_carry_on(
        conn: psycopg.Connection, autojump_clock: MockClock) -> None:
    names = ["a", "b", "c"]
    view = states(names)
    e = engine(names, {"standby_hours": 0, "manual_messages": 0}, view=view)
    # Enough that the ban falls well inside the schedule: with 60, three instances could all but
    # finish in the 30 min before it, and the one or two messages left went to a single instance.
    pending = 150
    driver = Driver(e, conn, pending=pending)

    async def ban_after_a_while() -> None:
        await trio.sleep(1800)
        view.apply_connection_update({"instance": "b", "state": "close", "statusReason": 402})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ban_after_a_while)
        await driver.run(until=Driver.now() + 3 * 86400)
    banned_at = T0 + 1800
    assert len(driver.sent) == pending                  # nothing lost: a and c took the rest
    late = [n for n, t in driver.sent if t > banned_at + 130]   # a send already in flight may land
    assert late and "b" not in late and {"a", "c"} <= set(late)
    row = {r["instance"]: r for r in e.explain(conn, Driver.now())}["b"]
    assert not row["eligible"] and "temporarily banned" in row["why_not"]
