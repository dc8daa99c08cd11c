"""The `[antiban]` table of a tenant file: every key, its default, its checks. A stdlib-only leaf
(like recovery_plan): the daemon validates the tenant file with `parse()` and passes the
normalised plan to the children, whose anti-ban engine (services/antiban) parses it again.

    [antiban]
    strategy = "conti_chips"
    delay_min = 30.0              # seconds of "composing" before each send: the gap between two
    delay_max = 120.0             # sends of one instance, drawn in [min, max]
    batch_size = 10               # after this many sends an instance pauses
    pause_min = 60.0              # ... for a pause drawn in [min, max] seconds
    pause_max = 180.0
    standby_hours = 24.0          # no automated send this long after an instance is first open
    manual_messages = 5           # manual messages (sent from the phone) needed before automation
    text_limit = 3                # the same text at most this many times an hour per instance (0: off)
    idle_hours = 72.0             # an instance idle this long drops back one warm-up stage
    require_attestation = false   # true: no sends before `oraclectl instances attest`
    recharge_days = 31            # an attested recharge older than this makes the instance ineligible

    [antiban.warmup.day1]         # messages a day per stage (day1, day2, day3, mature)
    min = 10
    max = 20

    [antiban.working_hours]       # business hours in the tenant's time zone (broadcast)
    start = "08:00"
    end = "22:00"
    timezone = "America/Sao_Paulo"

    [antiban.recovery]            # recovery is time-critical: gap, cap and rotation only, unless
    standby = false               # the tenant turns on more of the strategy here
    manual_messages = false
    business_hours = false
    warmup = false
    batch_pause = false
    text_limit = false
    humanized_delay = false       # true: recovery's gap is delay_min..delay_max, not typing_delay_ms
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

STRATEGIES = ("conti_chips",)
STAGES = ("day1", "day2", "day3", "mature")
WARMUP = {"day1": (10, 20), "day2": (30, 40), "day3": (50, 60), "mature": (70, 100)}
NUMBERS: dict[str, float] = {"delay_min": 30.0, "delay_max": 120.0, "pause_min": 60.0, "pause_max": 180.0,
                             "standby_hours": 24.0, "idle_hours": 72.0}
INTEGERS: dict[str, int] = {"batch_size": 10, "manual_messages": 5, "text_limit": 3, "recharge_days": 31}
RECOVERY_SWITCHES = ("standby", "manual_messages", "business_hours", "warmup", "batch_pause", "text_limit",
                     "humanized_delay")
KEYS = frozenset({"strategy", *NUMBERS, *INTEGERS, "require_attestation", "warmup", "working_hours",
                  "recovery"})
HOURS_KEYS = ("start", "end", "timezone")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")

Problems = list[tuple[str, str]]


def schema_keys() -> dict[str, Any]:
    """The key tree for tenants/schema.py (a dict is a table, None a value)."""
    return {**dict.fromkeys(sorted(KEYS - {"warmup", "working_hours", "recovery"})),
            "warmup": {stage: {"min": None, "max": None} for stage in STAGES},
            "working_hours": dict.fromkeys(HOURS_KEYS),
            "recovery": dict.fromkeys(RECOVERY_SWITCHES)}


def parse(table: dict[str, Any], *, prefix: str = "antiban") -> tuple[dict[str, Any], Problems]:
    """Validate an `[antiban]` table; returns (plan with every default filled in, problems).
    Unknown keys are left to the schema check (tomlcheck), which has the did-you-mean."""
    problems: Problems = []

    def fail(key: str, message: str) -> None:
        problems.append((f"{prefix}.{key}", message))

    plan = _scalars(table, fail)
    plan["warmup"] = _warmup(table.get("warmup", {}), fail)
    plan["working_hours"] = _hours(table.get("working_hours", {}), fail)
    plan["recovery"] = _switches(table.get("recovery", {}), fail)
    return plan, problems


Fail = Callable[[str, str], None]


def _scalars(table: dict[str, Any], fail: Fail) -> dict[str, Any]:
    plan: dict[str, Any] = {}
    strategy = table.get("strategy", "conti_chips")
    if strategy not in STRATEGIES:
        fail("strategy", f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        strategy = "conti_chips"
    plan["strategy"] = strategy
    for key, default in NUMBERS.items():
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10 * 86400:
            fail(key, f"must be a number >= 0 (seconds or hours), got {value!r}")
            value = default
        plan[key] = float(value)
    for key, whole in INTEGERS.items():
        value = table.get(key, whole)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100000:
            fail(key, f"must be a whole number >= 0, got {value!r}")
            value = whole
        plan[key] = value
    if plan["recharge_days"] < 1:
        fail("recharge_days", "must be at least 1")
        plan["recharge_days"] = 31
    if plan["delay_max"] > 3600:
        fail("delay_max", "must be at most 3600 seconds (Evolution holds the request that long)")
        plan["delay_max"] = 120.0
    for low in ("delay_min", "pause_min"):
        high = low.replace("min", "max")
        if plan[low] > plan[high]:
            fail(low, f"must not exceed {high}")
            plan[low] = plan[high]
    attest = table.get("require_attestation", False)
    if not isinstance(attest, bool):
        fail("require_attestation", "must be true or false")
        attest = False
    plan["require_attestation"] = attest
    return plan


def _warmup(warmup: Any, fail: Fail) -> dict[str, dict[str, int]]:
    if not isinstance(warmup, dict):
        fail("warmup", "must be a table of day1, day2, day3, mature")
        warmup = {}
    out = {}
    for stage in STAGES:
        got = warmup.get(stage, {})
        if not isinstance(got, dict):
            fail(f"warmup.{stage}", "must be a table with min and max")
            got = {}
        values = []
        for key, default in zip(("min", "max"), WARMUP[stage], strict=True):
            v = got.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100000:
                fail(f"warmup.{stage}.{key}", f"must be a whole number of messages >= 0, got {v!r}")
                v = default
            values.append(v)
        if values[0] > values[1]:
            fail(f"warmup.{stage}.min", "must not exceed max")
            values[0] = values[1]
        out[stage] = {"min": values[0], "max": values[1]}
    return out


def _hours(hours: Any, fail: Fail) -> dict[str, str]:
    if not isinstance(hours, dict):
        fail("working_hours", "must be a table with start, end and timezone")
        hours = {}
    out = {"start": hours.get("start", "08:00"), "end": hours.get("end", "22:00")}
    for key, default in (("start", "08:00"), ("end", "22:00")):
        if not isinstance(out[key], str) or not _HHMM.match(out[key]):
            fail(f"working_hours.{key}", f'must be "HH:MM" (24 h), e.g. "{default}"')
            out[key] = default
    zone = time_zone(hours.get("timezone", DEFAULT_ZONE), lambda why: fail("working_hours.timezone", why))
    if minutes(out["start"]) == minutes(out["end"]):
        fail("working_hours.end", "must differ from start")
        out = {"start": "08:00", "end": "22:00"}
    return {**out, "timezone": zone}


def _switches(rec: Any, fail: Fail) -> dict[str, bool]:
    if not isinstance(rec, dict):
        fail("recovery", "must be a table of switches such as standby = true")
        rec = {}
    out = {}
    for key in RECOVERY_SWITCHES:
        v = rec.get(key, False)
        if not isinstance(v, bool):
            fail(f"recovery.{key}", "must be true or false")
            v = False
        out[key] = v
    return out


def minutes(hhmm: str) -> int:
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


DEFAULT_ZONE = "America/Sao_Paulo"


def time_zone(value: Any, fail: Callable[[str], None]) -> str:
    """An IANA zone name, or DEFAULT_ZONE after fail(why) (also used by recovery_plan)."""
    try:
        if not isinstance(value, str) or not value:
            raise ValueError
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        fail(f'unknown time zone {value!r}: use an IANA name such as "{DEFAULT_ZONE}"')
        return DEFAULT_ZONE
    return value
