"""The engine's rules, one at a time, against the real database and a real InstanceStates."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta

import psycopg
import pytest

from oraclewad.services.antiban import Lease, Skip, Wait
from oraclewad.services.evolution import EvolutionError, FailureKind
from tests.antiban.conftest import empty
from tests.antiban.support import NO_WARMUP_WAIT, T0, engine, states


def drain(e, conn, now, n, *, text=None, phone=None):
    """Reserve and release up to n sends, jumping the clock to each Wait; returns the leases."""
    leases = []
    for i in range(n):
        got = e.reserve(conn, now, text=text if text is not None else f"msg {i}", phone=phone)
        while isinstance(got, Wait):
            assert got.until is not None, got.reason
            now = got.until
            got = e.reserve(conn, now, text=text if text is not None else f"msg {i}", phone=phone)
        assert isinstance(got, Lease)
        leases.append(got)
        now = got.lands_at
        e.release(conn, got, None, now)
    return leases


def test_standby_then_manual_messages_then_sends(conn: psycopg.Connection) -> None:
    e = engine(["a"])
    first = e.reserve(conn, T0)
    assert isinstance(first, Wait) and "standby until" in first.reason and first.until == T0 + 86400
    after = e.reserve(conn, T0 + 86400)
    assert isinstance(after, Wait) and after.until is None and "5 more manual message(s)" in after.reason
    for i in range(5):
        assert e.note_upsert(conn, "a", f"m{i}", True, T0 + 86400)
    assert not e.note_upsert(conn, "a", "m0", True, T0 + 86400)   # the same upsert again
    got = e.reserve(conn, T0 + 86400, text="olá")
    assert isinstance(got, Lease) and 30000 <= got.delay_ms <= 120000
    row = e.explain(conn, T0 + 86400)[0]
    assert (row["stage"], row["sent_today"], row["eligible"]) == ("day1", 1, False)
    assert 10 <= row["cap"] <= 20 and row["why_not"].startswith("sending")


def test_gap_one_in_flight_and_batch_pause(conn: psycopg.Connection) -> None:
    e = engine(["a"], {**NO_WARMUP_WAIT, "batch_size": 3})
    leases = drain(e, conn, T0, 7)
    lands = [lease.lands_at for lease in leases]
    gaps = [b - a for a, b in itertools.pairwise(lands)]
    assert all(g >= 30 for g in gaps)
    # After each third send a pause of 60-180 s comes on top of the gap.
    assert gaps[2] >= 60 + 30 and gaps[5] >= 60 + 30


def test_second_reservation_waits_for_the_first(conn: psycopg.Connection) -> None:
    e = engine(["a"], NO_WARMUP_WAIT)
    first = e.reserve(conn, T0, text="one")
    assert isinstance(first, Lease)
    second = e.reserve(conn, T0 + 1, text="two")
    assert isinstance(second, Wait) and "sending" in second.reason and second.until == first.lands_at


def test_two_engines_share_the_slots(conn: psycopg.Connection, antiban_dsn: str) -> None:
    # Two processes of one service: the second engine sees the first one's lease and cap.
    a, b = engine(["a"], NO_WARMUP_WAIT), engine(["a"], NO_WARMUP_WAIT)
    assert isinstance(a.reserve(conn, T0, text="x"), Lease)
    with psycopg.connect(antiban_dsn, autocommit=True) as other:
        assert isinstance(b.reserve(other, T0 + 1, text="y"), Wait)


def test_cap_is_drawn_once_and_reached(conn: psycopg.Connection) -> None:
    e = engine(["a"], {**NO_WARMUP_WAIT, "working_hours": {"start": "00:00", "end": "24:00"}})
    cap = e.explain(conn, T0)[0]["cap"]
    assert engine(["a"], NO_WARMUP_WAIT).explain(conn, T0 + 60)[0]["cap"] == cap   # another "process"
    leases = drain(e, conn, T0, cap)
    assert len({e.cal.day(x.at) for x in leases}) == 1
    got = e.reserve(conn, leases[-1].lands_at, text="one more")
    assert isinstance(got, Wait) and f"today's cap {cap} reached" in got.reason
    assert got.until == e.cal.day_start(e.cal.day(T0) + timedelta(days=1))


def test_business_hours_in_the_tenant_zone(conn: psycopg.Connection) -> None:
    e = engine(["a"], NO_WARMUP_WAIT)
    night = e.cal.day_start(e.cal.day(T0)) + 23 * 3600     # 23:00 in São Paulo
    got = e.reserve(conn, night, text="x")
    assert isinstance(got, Wait) and "outside business hours (08:00-22:00 America/Sao_Paulo)" in got.reason
    assert e.cal.local(got.until).hour == 8


def test_same_text_limit(conn: psycopg.Connection) -> None:
    e = engine(["a"], {**NO_WARMUP_WAIT, "batch_size": 0})
    leases = drain(e, conn, T0, 3, text="Promoção de hoje!")
    got = e.reserve(conn, leases[-1].lands_at, text="Promoção  de hoje!")
    assert isinstance(got, Wait) and "3 times in the last hour" in got.reason
    assert isinstance(e.reserve(conn, leases[-1].lands_at, text="another text"), Lease)


def test_rotation_most_quota_then_least_recently_used(conn: psycopg.Connection) -> None:
    e = engine(["a", "b", "c"], NO_WARMUP_WAIT)
    caps = {r["instance"]: r["cap"] for r in e.explain(conn, T0)}
    order = max(caps, key=lambda n: (caps[n], [-ord(c) for c in n]))
    first = e.reserve(conn, T0, text="1")
    assert isinstance(first, Lease) and first.instance == order


def test_ban_removes_the_instance_and_the_others_carry_on(conn: psycopg.Connection) -> None:
    view = states(["a", "b"])
    e = engine(["a", "b"], NO_WARMUP_WAIT, view=view)
    view.apply_connection_update({"instance": "a", "state": "close", "statusReason": 403})
    for lease in drain(e, conn, T0, 4):
        assert lease.instance == "b"
    row = {r["instance"]: r for r in e.explain(conn, T0)}["a"]
    assert not row["eligible"] and "banned" in row["why_not"]


def test_failures_take_an_instance_out_of_rotation(conn: psycopg.Connection) -> None:
    e = engine(["a"], {**NO_WARMUP_WAIT, "batch_size": 0})
    now = T0
    for i in range(4):
        got = e.reserve(conn, now, text=f"t{i}")
        assert isinstance(got, Lease)
        now = got.lands_at
        e.release(conn, got, EvolutionError(FailureKind.REJECTED, 400, ["bad"]), now)
    got = e.reserve(conn, now + 1000, text="x")
    assert isinstance(got, Wait) and "out of rotation: 4 of its last 4 sends failed" in got.reason


def test_exists_false_numbers_are_never_tried_again(conn: psycopg.Connection) -> None:
    e = engine(["a"], NO_WARMUP_WAIT)
    got = e.reserve(conn, T0, text="x", phone="5511999990000")
    assert isinstance(got, Lease)
    e.release(conn, got, EvolutionError(FailureKind.NOT_ON_WHATSAPP, 400, ["exists: false"]), got.lands_at)
    again = e.reserve(conn, got.lands_at + 500, text="x", phone="5511999990000")
    assert isinstance(again, Skip)
    other = e.reserve(conn, got.lands_at + 500, text="x", phone="5511999990001")
    assert not isinstance(other, Skip)     # only the number that answered exists:false


def test_attestation_required_and_recharge_age(conn: psycopg.Connection) -> None:
    e = engine(["a"], {**NO_WARMUP_WAIT, "require_attestation": True})
    got = e.reserve(conn, T0, text="x")
    assert isinstance(got, Wait) and "needs an attestation" in got.reason
    today = e.cal.day(T0)
    e.attest(conn, "a", network="4g", groups=3, recharge=today - timedelta(days=40), now=T0)
    got = e.reserve(conn, T0, text="x")
    assert isinstance(got, Wait) and "over 31 days old" in got.reason
    e.attest(conn, "a", network=None, groups=None, recharge=today - timedelta(days=2), now=T0)
    assert isinstance(e.reserve(conn, T0, text="x"), Lease)


def test_cancel_gives_the_slot_back(conn: psycopg.Connection) -> None:
    e = engine(["a"], NO_WARMUP_WAIT)
    got = e.reserve(conn, T0, text="x")
    assert isinstance(got, Lease)
    e.cancel(conn, got)
    row = e.explain(conn, T0)[0]
    assert row["eligible"] and row["sent_today"] == 0


def test_recovery_defaults_skip_standby_and_hours(conn: psycopg.Connection) -> None:
    e = engine(["a"], {}, service="recovery", recovery={"typing_delay_ms": 1200, "min_gap": 5.0,
                                                        "daily_cap": 2, "time_zone": "America/Sao_Paulo"})
    night = e.cal.day_start(e.cal.day(T0)) + 23.5 * 3600
    got = e.reserve(conn, night, text="pix")
    assert isinstance(got, Lease) and got.delay_ms == 1200
    e.release(conn, got, None, got.lands_at)
    second = e.reserve(conn, got.lands_at, text="pix 2")
    assert isinstance(second, Wait) and "gap" in second.reason and second.until == night + 5
    # A tenant may tighten recovery: business hours on.
    tight = engine(["b"], {"recovery": {"business_hours": True}}, service="recovery", recovery={})
    assert isinstance(tight.reserve(conn, night, text="pix"), Wait)


@pytest.mark.parametrize("bad", [{"network": "wifi"}, {"groups": -1}, {"recharge": "20-11-2026"},
                                 {"x": 1}, {}])
def test_attestation_body_is_validated(bad: dict) -> None:
    from oraclewad.services.antiban.service import parse_attestation

    fields, problem = parse_attestation(bad)
    assert fields is None and problem.split(":")[0] in ("network", "groups", "recharge", "x", "body")


def test_both_services_carry_the_same_antiban_migration() -> None:
    from pathlib import Path

    from oraclewad import migrations

    root = Path(__file__).resolve().parents[2] / "oraclewad" / "services"
    recovery = {m.version: m for m in migrations.discover(root / "recovery" / "migrations")}[3]
    broadcast = {m.version: m for m in migrations.discover(root / "broadcast" / "migrations")}[2]
    assert recovery.sql == broadcast.sql and "CREATE TABLE antiban_instances" in recovery.sql
    assert recovery.backward_compatible and broadcast.backward_compatible


def test_two_processes_racing_never_share_a_slot_or_pass_a_cap(conn: psycopg.Connection,
                                                                antiban_dsn: str) -> None:
    # Two "processes" (threads, each its own connection and engine) reserve at the same moments:
    # the row locks serialise them, so each instance has one lease at a time and stays in its cap.
    import threading

    names = ["a", "b"]
    table = {**NO_WARMUP_WAIT, "working_hours": {"start": "00:00", "end": "24:00"}, "batch_size": 0}

    def race(table: dict, release: bool) -> list[Lease]:
        got: list[Lease] = []
        lock = threading.Lock()

        def run() -> None:
            e = engine(names, table)
            with psycopg.connect(antiban_dsn, autocommit=True) as own:
                for i in range(40):
                    r = e.reserve(own, T0 + i, text=f"t{i}")
                    if isinstance(r, Lease):
                        with lock:
                            got.append(r)
                        if release:
                            e.release(own, r, None, T0 + i)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return got

    # Sends held (30-120 s each, never released within the 40 s): one lease per instance in all.
    held = race(table, release=False)
    assert sorted(x.instance for x in held) == names
    # Released at once (no gap): both keep reserving, and together stop at each instance's cap.
    empty(conn)
    fast = {**table, "delay_min": 0.0, "delay_max": 0.0}
    caps = {r["instance"]: r["cap"] for r in engine(names, fast).explain(conn, T0)}
    got = race(fast, release=True)
    assert Counter(x.instance for x in got) == Counter(caps)
