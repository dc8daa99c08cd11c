"""Property tests: random instance histories (state changes, manual messages, sends, outcomes,
clock jumps) against random rules; every schedule the engine hands out keeps every rule."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import psycopg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from oraclewad.services.antiban import Engine, Lease, Rules, Skip, Wait
from oraclewad.services.antiban.engine import EPS
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

MODES = ["hold", "ok", "ok", "ok", "ok", FailureKind.CONNECTION_CLOSED, FailureKind.REJECTED]
KINDS = ["advance", "advance", "state", "manual", "reserve", "reserve", "reserve", "reserve", "release"]


def as_step(k: str, small: float, big: float, jump: bool, name: str, state: tuple, text: str, phone: int,
            mode: object, error: object, after: float) -> tuple:
    """One step of a history. A reserve either holds its lease (a later "release" step frees it)
    or is released when it lands, with an outcome."""
    return {"advance": ("advance", big if jump else small), "state": ("state", name, state),
            "manual": ("manual", name), "reserve": ("reserve", text, phone, mode),
            "release": ("release", error, after)}[k]


step = st.builds(as_step, st.sampled_from(KINDS), st.floats(0, 300), st.floats(0, 40000), st.booleans(),
                 st.sampled_from(NAMES), st.sampled_from(STATES), st.sampled_from(TEXTS), st.integers(0, 9),
                 st.sampled_from(MODES), st.sampled_from(ERRORS), st.floats(0, 200))


@dataclass
class Sent:
    lease: Lease
    text: str
    manual_before: int
    released_at: float | None = None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(table=rules_tables, seeds=st.lists(st.integers(1, 2**60), min_size=3, max_size=3),
       steps=st.lists(step, min_size=20, max_size=120), warm=st.sampled_from([True, True, True, False]))
def test_no_schedule_breaks_a_rule(conn: psycopg.Connection, table: dict, seeds: list[int],
                                   steps: list[tuple], warm: bool) -> None:
    empty(conn)
    for name, seed in zip(NAMES, seeds, strict=True):
        conn.execute("INSERT INTO antiban_instances (instance, seed) VALUES (%s, %s)", (name, seed))
    if table["delay_min"] > table["delay_max"]:
        table = {**table, "delay_min": table["delay_max"]}
    rules = Rules.for_service("broadcast", table)
    view = states(NAMES)
    engine = Engine(service="broadcast", names=NAMES, rules=rules, instances=view)
    engine.observe(conn, T0)   # all open now: standby starts for each
    # Most histories get past standby and the manual messages: the rules after them matter too.
    if warm:
        steps = [*(("manual", n) for n in NAMES for _ in range(2)), ("advance", 3601.0), *steps]
    sent = play(engine, view, conn, steps)
    event(f"sends: {'0' if not sent else '1-4' if len(sent) < 5 else '5-14' if len(sent) < 15 else '15+'}")
    check(engine, conn, sent, first_open=T0)


def play(engine: Engine, view: InstanceStates, conn: psycopg.Connection, steps: list[tuple]) -> list[Sent]:
    now = T0
    manual: dict[str, int] = defaultdict(int)
    sent: list[Sent] = []
    outstanding: list[Sent] = []

    def release(record: Sent, kind: object, at: float) -> None:
        error = None if kind in (None, "ok") else EvolutionError(kind, 400, ["x"])  # type: ignore[arg-type]
        engine.release(conn, record.lease, error, at)
        record.released_at = at

    for op in steps:
        if op[0] == "advance":
            now += op[1]
        elif op[0] == "state":
            state, reason = op[2]
            view.apply_connection_update({"instance": op[1], "state": state, "statusReason": reason})
        elif op[0] == "manual":
            if engine.note_upsert(conn, op[1], f"m{manual[op[1]]}-{now}-{op[1]}", True, now):
                manual[op[1]] += 1
        elif op[0] == "reserve":
            got = engine.reserve(conn, now, text=op[1], phone=f"55119999900{op[2]:02d}")
            assert isinstance(got, Lease | Wait | Skip)
            if isinstance(got, Wait) and got.until is not None:
                assert got.until >= now - EPS
            if not isinstance(got, Lease):
                continue
            record = Sent(got, op[1], manual[got.instance])
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


def check(engine: Engine, conn: psycopg.Connection, sent: list[Sent], *, first_open: float) -> None:
    rules, cal = engine.rules, engine.cal
    days = {(r[0], r[1]): r[2] for r in conn.execute("SELECT instance, day, cap FROM antiban_days")}
    by_instance: dict[str, list[Sent]] = defaultdict(list)
    for record in sent:
        by_instance[record.lease.instance].append(record)
    for name, records in by_instance.items():
        # Caps: never more sends on a day than that day's cap.
        per_day: dict = defaultdict(int)
        for record in records:
            per_day[cal.day(record.lease.at)] += 1
        for day, count in per_day.items():
            assert count <= days[(name, day)], (name, day)
        for a, b in itertools.pairwise(records):
            # One in flight: the next reservation only once the previous was released (or its
            # lease expired), and never before the previous message landed.
            released = a.released_at if a.released_at is not None else a.lease.lands_at + rules.lease_for
            assert b.lease.at >= min(released, a.lease.lands_at + rules.lease_for) - EPS
            assert b.lease.at >= a.lease.lands_at - EPS
            # Gap: two landings at least delay_min apart.
            assert b.lease.lands_at - a.lease.lands_at >= rules.delay_min - EPS
        for record in records:
            lease = record.lease
            assert rules.delay_min * 1000 - 1 <= lease.delay_ms <= rules.delay_max * 1000 + 1
            # Standby and manual messages came first.
            assert lease.at >= first_open + rules.standby - EPS
            assert record.manual_before >= rules.manual_messages
            # Business hours: it starts and lands inside them.
            assert cal.open_at(lease.at, lease.lands_at) == lease.at
            # The same text at most text_limit times in any hour on one instance.
            if rules.text_limit:
                window = [r for r in records if r.text == record.text
                          and lease.at - 3600 < r.lease.at <= lease.at]
                assert len(window) <= rules.text_limit
