"""The rules one service's anti-ban engine plays (from the tenant's `[antiban]` plan), the
calendar of its time zone, and the engine's random draws.

Draws (gap, batch pause, a day's cap) are not taken from a process-local RNG: each is a hash of
the instance's seed (kept in PostgreSQL), what is drawn and its index. So every process of the
service draws the same value, a restart draws it again identically, and the ETA forecast knows
future draws exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from oraclewad import antiban_plan

DAY = 86400.0
FAILURE_WINDOW = 10        # an instance leaves rotation when more than 30 % of its last 10 sends failed
FAILURE_RATIO = 0.3
LEASE_GRACE = 30.0         # a dead process's lease expires this long after its send timeout


@dataclass(frozen=True)
class Rules:
    service: str
    delay_min: float                 # seconds of "composing" before each send (the gap), drawn
    delay_max: float
    min_gap: float                   # seconds between two reservations of one instance (recovery)
    batch_size: int                  # 0: no batch pause
    pause_min: float
    pause_max: float
    warmup: tuple[tuple[int, int], ...] | None   # (min, max) per stage day1..mature; None: daily_cap
    daily_cap: int
    standby: float                   # seconds after first open without automation (0: off)
    manual_messages: int             # manual messages needed before automation (0: off)
    hours: tuple[int, int] | None    # business hours in minutes of the day; None: any time
    zone: str
    text_limit: int                  # same text per instance per hour (0: off)
    idle: float                      # seconds idle before dropping a stage (0: off)
    require_attestation: bool
    recharge_days: int
    send_timeout: float

    @classmethod
    def for_service(cls, service: str, table: dict[str, Any] | None, *,
                    recovery: dict[str, Any] | None = None, send_timeout: float = 30.0) -> Rules:
        """Broadcast plays the whole strategy. Recovery (recovery: its parsed plan) keeps its own
        gap (`min_gap`, `typing_delay_ms`), cap (`daily_cap`) and time zone, with rotation, and
        whatever `[antiban.recovery]` turns on."""
        plan, problems = antiban_plan.parse(dict(table or {}))
        if problems:
            raise ValueError("antiban: " + "; ".join(f"{k}: {m}" for k, m in problems))
        hours = plan["working_hours"]
        full = cls(
            service=service, delay_min=plan["delay_min"], delay_max=plan["delay_max"], min_gap=0.0,
            batch_size=plan["batch_size"], pause_min=plan["pause_min"], pause_max=plan["pause_max"],
            warmup=tuple((plan["warmup"][s]["min"], plan["warmup"][s]["max"]) for s in antiban_plan.STAGES),
            daily_cap=0, standby=plan["standby_hours"] * 3600, manual_messages=plan["manual_messages"],
            hours=(antiban_plan.minutes(hours["start"]), antiban_plan.minutes(hours["end"])),
            zone=hours["timezone"], text_limit=plan["text_limit"], idle=plan["idle_hours"] * 3600,
            require_attestation=plan["require_attestation"], recharge_days=plan["recharge_days"],
            send_timeout=send_timeout)
        if service != "recovery":
            return full
        rec = recovery or {}
        on = plan["recovery"]
        typing = rec.get("typing_delay_ms", 1200) / 1000
        return replace(
            full,
            delay_min=full.delay_min if on["humanized_delay"] else typing,
            delay_max=full.delay_max if on["humanized_delay"] else typing,
            min_gap=float(rec.get("min_gap", 5.0)),
            batch_size=full.batch_size if on["batch_pause"] else 0,
            warmup=full.warmup if on["warmup"] else None, daily_cap=int(rec.get("daily_cap", 500)),
            standby=full.standby if on["standby"] else 0.0,
            manual_messages=full.manual_messages if on["manual_messages"] else 0,
            hours=full.hours if on["business_hours"] else None,
            zone=full.zone if on["business_hours"] else rec.get("time_zone", full.zone),
            text_limit=full.text_limit if on["text_limit"] else 0,
            idle=full.idle if on["warmup"] else 0.0)

    @property
    def lease_for(self) -> float:
        """How long past its landing a reservation holds the instance if nobody releases it."""
        return self.send_timeout + LEASE_GRACE


# ---- draws --------------------------------------------------------------------------------------

def unit(seed: int, kind: str, index: int) -> float:
    """A uniform number in [0, 1) that only depends on (seed, kind, index)."""
    digest = hashlib.blake2b(f"{seed}:{kind}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def gap_ms(rules: Rules, seed: int, seq: int) -> int:
    return round(1000 * (rules.delay_min + unit(seed, "gap", seq) * (rules.delay_max - rules.delay_min)))


def pause_s(rules: Rules, seed: int, seq: int) -> float:
    return rules.pause_min + unit(seed, "pause", seq) * (rules.pause_max - rules.pause_min)


def cap_for(rules: Rules, seed: int, day: date, stage: int) -> int:
    """The day's cap at `stage` (1..4), drawn once per instance and day."""
    if rules.warmup is None:
        return rules.daily_cap
    lo, hi = rules.warmup[min(max(stage, 1), 4) - 1]
    return lo + int(unit(seed, "cap", day.toordinal()) * (hi - lo + 1))


# ---- calendar -----------------------------------------------------------------------------------

class Calendar:
    """Days and business hours in one time zone (ZoneInfo lookups cached)."""

    def __init__(self, rules: Rules) -> None:
        self.zone = ZoneInfo(rules.zone)
        self.hours = rules.hours

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.zone)

    def day(self, t: float) -> date:
        return self.local(t).date()

    def day_start(self, d: date) -> float:
        return datetime(d.year, d.month, d.day, tzinfo=self.zone).timestamp()

    def next_day(self, t: float) -> float:
        return self.day_start(self.day(t) + timedelta(days=1))

    def open_at(self, t: float, until: float | None = None) -> float:
        """The first moment >= t inside business hours such that a send starting then and landing
        `until - t` seconds later stays inside; t itself when it fits."""
        if self.hours is None:
            return t
        need = 0.0 if until is None else max(until - t, 0.0)
        start, end = self.hours
        d = self.day(t) - timedelta(days=1)
        for _ in range(10):
            opens = self.day_start(d) + start * 60
            closes = (self.day_start(d) if start < end else self.day_start(d + timedelta(days=1))) + end * 60
            if closes > t:
                candidate = max(t, opens)
                if candidate + need <= closes:
                    return candidate
            d += timedelta(days=1)
        return t  # a window shorter than the send itself: the caller's check refuses it anyway
