"""Property tests: random instance histories (state changes, manual messages, sends, outcomes,
clock jumps) against random rules; every schedule the engine hands out keeps every rule."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from oraclewad import antiban_plan
from oraclewad.services.antiban import Engine, Lease, Rules, Skip, Wait
from oraclewad.services.antiban.engine import EPS
from oraclewad.services.antiban.rules import unit
from oraclewad.services.evolution import EvolutionError, FailureKind
from oraclewad.services.instances import InstanceStates
from tests.antiban.conftest import empty
from tests.antiban.support import T0, states

NAMES = ["i1", "i2", "i3"]
TEXTS = ["Oi!", "Promoção", "Olá, tudo bem?", "Frete grátis"]
STATES = [("open", None)] * 4 + [("connecting", None), ("close", 428), ("close", 401), ("refused", None)]
ERRORS = [None, None, None, FailureKind.CONNECTION_CLOSED, FailureKind.REJECTED, FailureKind.AMBIGUOUS,
          FailureKind.NOT_ON_WHATSAPP]

rules_tables = st.fixed_dictionaries({
    "delay_min": st.sampled_from([0.0, 5.0, 30.0]),
    "delay_max": st.sampled_from([30.0, 120.0]),
    "batch_size": st.integers(0, 4),
    "pause_min": st.just(60.0), "pause_max": st.just(180.0),
    "standby_hours": st.sampled_from([0.0, 0.01, 1.0]),
    "manual_messages": st.integers(0, 2),
    "text_limit": st.integers(0, 2),
    "warmup": st.fixed_dictionaries({"day1": st.fixed_dictionaries({"min": st.integers(1, 3),
                                                                    "max": st.integers(3, 5)})}),
    "working_hours": st.sampled_from([{"start": "08:00", "end": "22:00"}, {"start": "20:00", "end": "06:00"},
                                      {"start": "00:00", "end": "24:00"}]),
})

MODES = ["hold", "hold", "ok", "ok", "ok", "ok", FailureKind.CONNECTION_CLOSED, FailureKind.REJECTED]
KINDS = ["advance", "advance", "state", "manual", "reserve", "reserve", "reserve", "reserve", "release",
         "wake", "wake", "wake"]
# A sender wakes at the Wait's `until`; a little before it probes the edge of every rule's window.
EARLY = [0.0, 0.0, 0.0005, 0.3, 0.9, 0.9, 1.5]


def as_step(k: str, small: float, big: float, jump: bool, name: str, state: tuple, text: str, phone: int,
            mode: object, error: object, after: float, early: float) -> tuple:
    """One step of a history. A reserve either holds its lease (a later "release" step frees it)
    or is released when it lands, with an outcome; some are quiet (an operator's test message). A
    wake moves the clock to the last Wait's until, or to one instance's next slot (or just before)."""
    return {"advance": ("advance", big if jump else small), "state": ("state", name, state),
            "manual": ("manual", name), "reserve": ("reserve", text, phone, mode, jump and phone < 3),
            "release": ("release", error, after), "wake": ("wake", early, name if jump else None)}[k]


step = st.builds(as_step, st.sampled_from(KINDS), st.floats(0, 300), st.floats(0, 40000), st.booleans(),
                 st.sampled_from(NAMES), st.sampled_from(STATES), st.sampled_from(TEXTS), st.integers(0, 9),
                 st.sampled_from(MODES), st.sampled_from(ERRORS), st.floats(0, 200), st.sampled_from(EARLY))


@dataclass
class Sent:
    lease: Lease
    text: str
    manual_before: int
    quiet: bool = False
    released_at: float | None = None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(table=rules_tables, seeds=st.lists(st.integers(1, 2**60), min_size=3, max_size=3),
       steps=st.lists(step, min_size=20, max_size=120),
       warm=st.sampled_from(["done", "done", "manual", "none"]),
       fleet=st.sampled_from([1, 2, 3, 3]), late=st.sampled_from([None, None, 30.0, 100.0, 200.0]))
def test_no_schedule_breaks_a_rule(conn: psycopg.Connection, table: dict, seeds: list[int],
                                   steps: list[tuple], warm: str, fleet: int,
                                   late: float | None) -> None:
    # One instance sends back to back (rotation cannot hide a gap); three rotate.
    names = NAMES[:fleet]
    empty(conn)
    for name, seed in zip(names, seeds, strict=False):
        conn.execute("INSERT INTO antiban_instances (instance, seed) VALUES (%s, %s)", (name, seed))
    if table["delay_min"] > table["delay_max"]:
        table = {**table, "delay_min": table["delay_max"]}
    rules = Rules.for_service("broadcast", table)
    view = states(names)
    engine = Engine(service="broadcast", names=names, rules=rules, instances=view)
    engine.observe(conn, T0)   # all open now: standby starts for each
    # Most histories get past standby and the manual messages: the rules after them matter too.
    # Some have the manual messages in standby, so its end is probed (wake steps).
    prelude: list[tuple] = []
    if warm != "none":
        prelude = [*(("manual", n) for n in names for _ in range(2)),
                   *([("advance", 3601.0)] if warm == "done" else [])]
    # Some go on shortly before business hours close, so a send that would land after is probed.
    if late is not None:
        prelude.append(("closing", late))
    steps = [*prelude, *steps]
    sent = play(engine, view, conn, steps)
    event(f"sends: {'0' if not sent else '1-4' if len(sent) < 5 else '5-14' if len(sent) < 15 else '15+'}")
    check(engine, conn, sent, first_open=T0, table=table, seeds=dict(zip(NAMES, seeds, strict=True)))


def closing_after(engine: Engine, now: float) -> float:
    """The next time business hours close (picks a test moment; the check uses the table)."""
    if engine.rules.hours is None:
        return now
    end = engine.rules.hours[1] * 60
    day = engine.cal.day(now)
    close = engine.cal.day_start(day) + end
    return close if close > now else engine.cal.day_start(day + timedelta(days=1)) + end


def play(engine: Engine, view: InstanceStates, conn: psycopg.Connection, steps: list[tuple]) -> list[Sent]:
    now = T0
    manual: dict[str, int] = defaultdict(int)
    sent: list[Sent] = []
    outstanding: list[Sent] = []
    until: float | None = None

    def release(record: Sent, kind: object, at: float) -> None:
        error = None if kind in (None, "ok") else EvolutionError(kind, 400, ["x"])  # type: ignore[arg-type]
        engine.release(conn, record.lease, error, at)
        record.released_at = at

    for op in steps:
        if op[0] == "advance":
            now += op[1]
        elif op[0] == "closing":
            now = closing_after(engine, now) - op[1]
        elif op[0] == "wake":
            slot = until if op[2] is None else next(
                (s.next_slot for s in engine.observe(conn, now) if s.instance == op[2]), until)
            if slot is not None:
                now = max(now, slot - op[1])
        elif op[0] == "state":
            state, reason = op[2]
            view.apply_connection_update({"instance": op[1], "state": state, "statusReason": reason})
        elif op[0] == "manual":
            if engine.note_upsert(conn, op[1], f"m{manual[op[1]]}-{now}-{op[1]}", True, now):
                manual[op[1]] += 1
        elif op[0] == "reserve":
            got = engine.reserve(conn, now, text=op[1], phone=f"55119999900{op[2]:02d}", quiet=op[4])
            assert isinstance(got, Lease | Wait | Skip)
            if isinstance(got, Wait) and got.until is not None:
                assert got.until >= now - EPS
                until = got.until
            if not isinstance(got, Lease):
                continue
            record = Sent(got, op[1], manual[got.instance], quiet=op[4])
            sent.append(record)
            if op[3] == "hold":
                outstanding.append(record)
            else:
                now = max(now, got.lands_at)
                release(record, op[3], now)
        elif op[0] == "release" and outstanding:
            record = outstanding.pop(0)
            now = max(now, record.lease.at + op[2])
            release(record, op[1], now)
    return sent


# The spec the schedule is checked against: the tenant table and the instance's seed, never the
# engine's own Rules (a wrong Rules would otherwise agree with itself). The draws are replayed with
# the engine's hash, and every value is checked against the configured range as well.
LEASE = 30.0 + 30.0   # send_timeout (default) + the grace after which a dead process's lease expires


def drawn(seed: int, kind: str, index: int, low: float, high: float) -> float:
    return low + unit(seed, kind, index) * (high - low)


def gap_of(table: dict, seed: int, seq: int) -> float:
    """The gap (Evolution's delay) of an instance's seq-th send, in seconds."""
    ms = round(1000 * drawn(seed, "gap", seq, table["delay_min"], table["delay_max"]))
    assert 1000 * table["delay_min"] <= ms <= 1000 * table["delay_max"]
    return ms / 1000


def pause_after(table: dict, seed: int, seq: int) -> float:
    """The batch pause after an instance's seq-th send (0 inside a batch)."""
    if not table["batch_size"] or seq % table["batch_size"]:
        return 0.0
    pause = drawn(seed, "pause", seq, table["pause_min"], table["pause_max"])
    assert table["pause_min"] <= pause <= table["pause_max"]
    return pause


def cap_range(table: dict, stage: int) -> tuple[int, int]:
    name = ("day1", "day2", "day3", "mature")[stage - 1]
    got = table["warmup"].get(name) or {}
    lo, hi = antiban_plan.WARMUP[name]
    return got.get("min", lo), got.get("max", hi)


def in_hours(table: dict, t: float, *, landing: bool) -> bool:
    """t inside the table's business hours (a landing may be the closing moment itself, and a
    quiet send lands the moment it starts, maybe the opening moment)."""
    hours = table["working_hours"]
    local = datetime.fromtimestamp(t, ZoneInfo(hours.get("timezone", "America/Sao_Paulo")))
    m = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    start, end = antiban_plan.minutes(hours["start"]), antiban_plan.minutes(hours["end"])
    tol = EPS / 60
    after_start = m >= start - tol
    before_end = m <= end + tol if landing else m < end
    return (after_start and before_end) if start < end else (after_start or before_end)


def check(engine: Engine, conn: psycopg.Connection, sent: list[Sent], *, first_open: float,
          table: dict, seeds: dict[str, int]) -> None:
    cal = engine.cal
    days = {(r[0], r[1]): (r[2], r[3])
            for r in conn.execute("SELECT instance, day, stage, cap FROM antiban_days")}
    by_instance: dict[str, list[Sent]] = defaultdict(list)
    for record in sent:
        by_instance[record.lease.instance].append(record)
    for name, records in by_instance.items():
        seed = seeds[name]
        # Caps: the day's cap is the draw for its stage's configured range, and never exceeded.
        per_day: dict = defaultdict(int)
        for record in records:
            per_day[cal.day(record.lease.at)] += 1
        for day, count in per_day.items():
            stage, cap = days[(name, day)]
            lo, hi = cap_range(table, stage)
            assert cap == lo + int(unit(seed, "cap", day.toordinal()) * (hi - lo + 1)), (name, day, stage)
            assert count <= cap, (name, day)
        # Gap: the k-th send on an instance plays exactly the k-th draw of its seed as its delay
        # (a quiet one plays none: its gap is the silence before it, checked below).
        for k, record in enumerate(records, start=1):
            expected = 0.0 if record.quiet else gap_of(table, seed, k)
            assert record.lease.delay_ms / 1000 == expected, (name, k)
            assert record.lease.lands_at - record.lease.at >= expected - EPS
        for k, (a, b) in enumerate(itertools.pairwise(records), start=1):
            # One in flight: the next reservation only once the previous was released (or its
            # lease expired), and never before the previous message landed.
            released = a.released_at if a.released_at is not None else a.lease.lands_at + LEASE
            assert b.lease.at >= min(released, a.lease.lands_at + LEASE) - EPS
            # Gap: b starts after a landed (plus a's batch pause), so two landings are at least
            # b's drawn gap apart.
            silence = gap_of(table, seed, k + 1) if b.quiet else 0.0
            assert b.lease.at >= a.lease.lands_at + pause_after(table, seed, k) + silence - EPS, (name, k)
            assert (b.lease.lands_at - a.lease.lands_at
                    >= gap_of(table, seed, k + 1) + pause_after(table, seed, k) - EPS), (name, k)
        for record in records:
            lease = record.lease
            # Standby and manual messages came first.
            assert lease.at >= first_open + table["standby_hours"] * 3600 - EPS
            assert record.manual_before >= table["manual_messages"]
            # Business hours: it starts and lands inside them.
            assert in_hours(table, lease.at, landing=False) and in_hours(table, lease.lands_at, landing=True)
            # The same text at most text_limit times in any hour on one instance.
            if table["text_limit"]:
                # PostgreSQL keeps microseconds: a send an hour minus half a microsecond after
                # another (a wake to the engine's own "text free again" slot) is an hour later.
                window = [r for r in records if r.text == record.text
                          and lease.at - 3600 + EPS < r.lease.at <= lease.at]
                assert len(window) <= table["text_limit"]
