"""The Conti Chips anti-ban engine: which instance may send now, with which gap, and why not.

Every call takes a psycopg connection and does its work in the caller's transaction: the
reservation locks the service's instance rows (`SELECT ... FOR UPDATE`, in name order), decides,
and writes the slot, so two processes of one service never share a slot, exceed a cap or
shorten a gap, and a claim done in the same transaction commits or rolls back with it.

The gap between two sends of an instance is the `delay` of the send itself (Evolution shows
"composing" that long, then sends): a reservation at t lands at t + delay, and the instance's
next reservation is not before that landing (one lease per instance), so two landings are always
at least `delay_min` apart.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge

from oraclewad.services.antiban import forecast as _forecast
from oraclewad.services.antiban.rules import (
    DAY,
    FAILURE_RATIO,
    FAILURE_WINDOW,
    Calendar,
    Rules,
    cap_for,
    gap_ms,
    pause_s,
)

STAGE_NAMES = {0: "standby", 1: "day1", 2: "day2", 3: "day3", 4: "mature"}
_COLUMNS = ("instance", "seed", "seq", "first_open_at", "warm_day", "manual_count", "batch_count",
            "free_at", "last_send_at", "last_drop_at", "lease_token", "lease_lands_at", "lease_until",
            "out_reason", "attest_network", "attest_groups", "attest_recharge", "attested_at")


EPS = 0.001   # times go through timestamptz (microseconds): a slot at `now` is not "later" by rounding
Blocked = tuple[str, float | None, bool]   # (why, until when, whether waiting lifts it)


class InstanceView(Protocol):
    """What the engine needs of services/instances.InstanceStates."""

    states: dict[str, Any]     # name -> object with .state, .detail, .can_send

    def note_send(self, name: str, error: Any) -> None: ...


@dataclass(frozen=True)
class Lease:
    instance: str
    token: str
    delay_ms: int          # pass to send_text(delay_ms=...): the gap, played as "composing"
    at: float              # reserved at
    lands_at: float        # at + delay: when the message goes out
    phone: str | None = None
    _undo: tuple[Any, int] = (None, 0)     # (free_at, batch_count) before the reservation


@dataclass(frozen=True)
class Wait:
    until: float | None    # None: nothing changes by waiting (no instance can become eligible alone)
    reason: str


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass
class Status:
    """One instance, as the engine sees it at `now`."""

    instance: str
    state: str
    stage: int                 # 0 before warm-up (standby, manual messages), 1..4 (4: mature)
    cap: int | None
    sent: int
    next_slot: float | None    # the earliest moment it may send (None: not by waiting)
    eligible: bool             # may send now
    why: str                   # why it may not ("" when eligible)
    seed: int = 0
    seq: int = 0
    batch_count: int = 0
    free_at: float | None = None
    warm_day: date | None = None
    last_send_at: float | None = None
    waiting: bool = True       # False: excluded until something outside the engine changes
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self, service: str) -> dict[str, Any]:
        return {"instance": self.instance, "service": service, "state": self.state,
                "stage": STAGE_NAMES[self.stage], "cap": self.cap, "sent_today": self.sent,
                "next_slot": self.next_slot, "eligible": self.eligible, "why_not": self.why, **self.extra}


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _unix(v: datetime | None) -> float | None:
    return None if v is None else v.timestamp()


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()


class Engine:
    def __init__(self, *, service: str, names: Iterable[str], rules: Rules, instances: InstanceView,
                 log: logging.Logger | None = None, registry: CollectorRegistry | None = None,
                 numbers: Any = None) -> None:
        self.service = service
        # The tenant's exists:false list (services/not_on_whatsapp.py), shared with its other service.
        self.numbers = numbers
        self.names = sorted(names)
        self.rules = rules
        self.cal = Calendar(rules)
        self.instances = instances
        self.log = log or logging.getLogger("oraclewad.services.antiban")
        self._last_wait = ""
        self._seen_state: dict[str, str] = {}
        self._gauges: dict[str, Gauge] = {}
        self._events: Counter | None = None
        if registry is not None:
            for key, doc in (("stage", "warm-up stage: 0 standby/manual, 1-3 day1-3, 4 mature"),
                             ("cap", "today's cap (messages)"), ("sent_today", "messages sent today"),
                             ("eligible", "1 when the instance may send now")):
                self._gauges[key] = Gauge(f"oraclewa_antiban_{key}", doc, ["instance"], registry=registry)
            self._gauges["state"] = Gauge("oraclewa_antiban_state", "1 for the instance's current state",
                                          ["instance", "state"], registry=registry)
            self._events = Counter("oraclewa_antiban_events", "anti-ban events (standby started, "
                                   "left rotation, paused, dropped a stage, number invalid...)",
                                   ["instance", "event"], registry=registry)

    # ---- events and metrics ------------------------------------------------------------------

    def _event(self, instance: str, event: str, message: str, **extra: Any) -> None:
        self.log.warning(message, extra={"instance": instance, "event": event, **extra})
        if self._events is not None:
            self._events.labels(instance, event).inc()

    def _metrics(self, statuses: list[Status]) -> None:
        if not self._gauges:
            return
        for s in statuses:
            self._gauges["stage"].labels(s.instance).set(s.stage)
            self._gauges["cap"].labels(s.instance).set(s.cap or 0)
            self._gauges["sent_today"].labels(s.instance).set(s.sent)
            self._gauges["eligible"].labels(s.instance).set(1 if s.eligible else 0)
            previous = self._seen_state.get(s.instance)
            if previous and previous != s.state:
                self._gauges["state"].labels(s.instance, previous).set(0)
            self._gauges["state"].labels(s.instance, s.state).set(1)

    # ---- rows --------------------------------------------------------------------------------

    def ensure(self, conn: psycopg.Connection) -> None:
        """A row (with its own random seed) for every instance of the service."""
        conn.execute("INSERT INTO antiban_instances (instance, seed) SELECT n, s FROM unnest(%s::text[], "
                     "%s::bigint[]) AS t(n, s) ON CONFLICT DO NOTHING",
                     (self.names, [secrets.randbits(62) for _ in self.names]))

    def _rows(self, conn: psycopg.Connection, lock: bool = True) -> list[dict[str, Any]]:
        sql = (f"SELECT {', '.join(_COLUMNS)} FROM antiban_instances WHERE instance = ANY(%s) "
               "ORDER BY instance" + (" FOR UPDATE" if lock else ""))
        rows = [dict(zip(_COLUMNS, r, strict=True)) for r in conn.execute(sql, (self.names,)).fetchall()]
        if len(rows) < len(self.names):
            self.ensure(conn)
            rows = [dict(zip(_COLUMNS, r, strict=True)) for r in conn.execute(sql, (self.names,)).fetchall()]
        return rows

    def _days(self, conn: psycopg.Connection, day: date) -> dict[str, tuple[int, int, int]]:
        rows = conn.execute("SELECT instance, stage, cap, sent FROM antiban_days WHERE day = %s "
                            "AND instance = ANY(%s)", (day, self.names)).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def _update(self, conn: psycopg.Connection, name: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = %({k})s" for k in values)
        conn.execute(f"UPDATE antiban_instances SET {sets} WHERE instance = %(_name)s",
                     {**values, "_name": name})

    # ---- assessment --------------------------------------------------------------------------

    def _stage(self, warm_day: date | None, today: date) -> int:
        if warm_day is None or today < warm_day:
            return 0
        return min((today - warm_day).days + 1, 4)

    def _assess(self, conn: psycopg.Connection, row: dict[str, Any], days: dict[str, tuple[int, int, int]],
                now: float, texts: dict[str, tuple[int, datetime]], quiet: bool = False) -> Status:
        name = row["instance"]
        st = self.instances.states.get(name)
        s = Status(name, getattr(st, "state", "unknown"), 0, None, 0, None, False, "", seed=row["seed"],
                   seq=row["seq"], batch_count=row["batch_count"], free_at=_unix(row["free_at"]),
                   last_send_at=_unix(row["last_send_at"]))
        self._transitions(conn, row, st, now)
        # Stage and cap first, so `oraclectl instances` shows them whatever blocks the instance.
        s.stage = self._stage_now(conn, row, days, now)
        s.warm_day = row["warm_day"]
        if s.stage >= 1:
            _, s.cap, s.sent = self._day_row(conn, row, days, self.cal.day(now), s.stage)
        s.extra = {"manual_messages": row["manual_count"],
                   "attested": None if row["attested_at"] is None else {
                       "network": row["attest_network"], "groups": row["attest_groups"],
                       "recharge": row["attest_recharge"].isoformat() if row["attest_recharge"] else None}}
        blocked = self._held(row, st, s, now) or self._timing(conn, row, s, now, texts, quiet)
        if blocked is None:
            s.eligible, s.next_slot = True, now
        else:
            s.why, s.next_slot, waiting = blocked
            s.waiting = waiting and s.next_slot is not None
        return s

    def _transitions(self, conn: psycopg.Connection, row: dict[str, Any], st: Any, now: float) -> None:
        """What changed since this process last looked: back open, first open, paused or banned."""
        name, state = row["instance"], getattr(st, "state", "unknown")
        previous = self._seen_state.get(name)
        self._seen_state[name] = state
        if state == "open" and previous not in (None, "open") and row["out_reason"]:
            # Back online after leaving rotation on its failure rate: a fresh start.
            self._update(conn, name, out_reason=None)
            row["out_reason"] = None
            self.log.info("instance back in rotation (open again)", extra={"instance": name})
        if state == "open" and row["first_open_at"] is None:
            warm = self.cal.day(now + self.rules.standby)
            self._update(conn, name, first_open_at=_ts(now), warm_day=warm)
            row["first_open_at"], row["warm_day"] = _ts(now), warm
            if self.rules.standby:
                self._event(name, "standby_started", "first seen open: standby begins",
                            until=now + self.rules.standby)
        if st is not None and state != previous and previous is not None and not st.can_send:
            self._event(name, "paused" if getattr(st, "in_rotation", True) else "left_rotation",
                        f"instance {state}: {getattr(st, 'detail', '')}", state=state)

    def _stage_now(self, conn: psycopg.Connection, row: dict[str, Any], days: dict[str, tuple[int, int, int]],
                   now: float) -> int:
        """Today's warm-up stage, after dropping one when the instance sat idle too long."""
        r, name, today = self.rules, row["instance"], self.cal.day(now)
        if r.warmup is None:
            return 4
        stage = self._stage(row["warm_day"], today)
        first_open = _unix(row["first_open_at"])
        if not r.idle or stage < 1 or first_open is None:
            return stage
        # Idle since the last send, the last drop-back or the end of standby, whichever is latest.
        last = max(x for x in (_unix(row["last_send_at"]), _unix(row["last_drop_at"]), first_open + r.standby)
                   if x is not None)
        if now - last <= r.idle:
            return stage
        new = max(stage - 1, 1)
        warm = today - timedelta(days=new - 1)
        self._update(conn, name, warm_day=warm, last_drop_at=_ts(now))
        row["warm_day"], row["last_drop_at"] = warm, _ts(now)
        self._event(name, "stage_dropped", f"idle over {r.idle / 3600:g} h: back one warm-up stage",
                    stage_from=STAGE_NAMES[stage], stage_to=STAGE_NAMES[new])
        if name in days and days[name][2] == 0:
            # Nothing sent today yet: today's cap follows the lower stage.
            cap = cap_for(r, row["seed"], today, new)
            conn.execute("UPDATE antiban_days SET stage = %s, cap = %s WHERE instance = %s AND day = %s",
                         (new, cap, name, today))
            days[name] = (new, cap, 0)
        return new

    def _day_row(self, conn: psycopg.Connection, row: dict[str, Any], days: dict[str, tuple[int, int, int]],
                 today: date, stage: int) -> tuple[int, int, int]:
        """(stage, cap, sent) of today: the cap is drawn once, by whichever process looks first."""
        name = row["instance"]
        if name not in days:
            cap = cap_for(self.rules, row["seed"], today, stage)
            conn.execute("INSERT INTO antiban_days (instance, day, stage, cap) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT DO NOTHING", (name, today, stage, cap))
            got = conn.execute("SELECT stage, cap, sent FROM antiban_days WHERE instance = %s AND day = %s",
                               (name, today)).fetchone()
            days[name] = (got[0], got[1], got[2]) if got else (stage, cap, 0)
        return days[name]

    def _held(self, row: dict[str, Any], st: Any, s: Status, now: float) -> Blocked | None:
        """What keeps the instance out whatever the clock: state, rotation, attestation, warm-up."""
        r, name = self.rules, row["instance"]
        if st is None or not st.can_send:
            return f"{s.state}: {getattr(st, 'detail', 'unknown instance')}", None, False
        if row["out_reason"]:
            return f"out of rotation: {row['out_reason']} (back when it reconnects)", None, False
        if r.require_attestation and row["attested_at"] is None:
            return (f"needs an attestation: oraclectl instances attest TENANT {name} --network 4g "
                    "--groups 3 --recharge YYYY-MM-DD"), None, False
        recharge = row["attest_recharge"]
        if recharge is not None and (self.cal.day(now) - recharge).days > r.recharge_days:
            return (f"the recharge of {recharge.isoformat()} is over {r.recharge_days} days old: "
                    "recharge and attest again"), None, False
        standby_end = _unix(row["first_open_at"]) + r.standby
        if now < standby_end:
            return f"standby until {self.when(standby_end)} (after first open)", standby_end, True
        if r.warmup is not None and s.stage == 0:
            start = self.cal.day_start(row["warm_day"])
            return f"warm-up starts {self.when(start)}", start, True
        if row["manual_count"] < r.manual_messages:
            return (f"waiting for {r.manual_messages - row['manual_count']} more manual message(s) "
                    "sent from the phone before automation"), None, False
        return None

    def _timing(self, conn: psycopg.Connection, row: dict[str, Any], s: Status, now: float,
                texts: dict[str, tuple[int, datetime]], quiet: bool = False) -> Blocked | None:
        """What the clock will lift: the cap, a send in flight, the gap or pause, hours, same text.
        quiet: a send without typing, so the gap must pass in silence before it."""
        r, name = self.rules, row["instance"]
        if s.cap is not None and s.sent >= s.cap:
            return (f"today's cap {s.cap} reached ({STAGE_NAMES[s.stage]})",
                    self.cal.open_at(self.cal.next_day(now)), True)
        if row["lease_token"] is not None:
            lands = _unix(row["lease_lands_at"])
            if _unix(row["lease_until"]) > now:
                return f"sending (lands at {self.when(lands)})", max(lands, now), True
            self._update(conn, name, lease_token=None, lease_lands_at=None, lease_until=None)
            self._event(name, "lease_expired",
                        "a send was never released (its process died?): instance freed")
        delay = gap_ms(r, row["seed"], row["seq"] + 1) / 1000
        free = None if s.free_at is None else s.free_at + (delay if quiet else 0.0)
        if free is not None and free > now + EPS:
            kind = "batch pause" if row["batch_count"] == 0 and row["seq"] else "gap"
            return f"{kind} until {self.when(free)}", free, True
        opens = self.cal.open_at(now, now if quiet else now + delay)
        if opens > now:
            a, b = r.hours or (0, 0)
            return (f"outside business hours ({a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d} "
                    f"{r.zone}): opens {self.when(opens)}"), opens, True
        got = texts.get(name)
        if got and got[0] >= r.text_limit:
            return (f"this text went out {got[0]} times in the last hour (limit {r.text_limit})",
                    got[1].timestamp() + 3600, True)
        return None

    def when(self, t: float | None) -> str:
        return "-" if t is None else self.cal.local(t).strftime("%Y-%m-%d %H:%M:%S %Z")

    def statuses(self, conn: psycopg.Connection, now: float, digest: bytes | None = None,
                 quiet: bool = False) -> list[Status]:
        rows = self._rows(conn)
        days = self._days(conn, self.cal.day(now))
        texts: dict[str, tuple[int, datetime]] = {}
        if digest is not None and self.rules.text_limit:
            # How often this very text went out in the last hour, per instance (one query for all).
            texts = {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT instance, count(*), min(reserved_at) FROM antiban_sends WHERE text_hash = %s "
                "AND reserved_at > %s AND instance = ANY(%s) GROUP BY instance",
                (digest, _ts(now - 3600), self.names))}
        return [self._assess(conn, row, days, now, texts, quiet) for row in rows]

    # ---- the sender's calls ------------------------------------------------------------------

    def reserve(self, conn: psycopg.Connection, now: float, *, text: str | None = None,
                phone: str | None = None, quiet: bool = False) -> Lease | Wait | Skip:
        """A slot on the best eligible instance now, a Wait (until when, why) or a Skip.

        quiet: a send played without typing (delay 0, e.g. an operator's test message); it still
        counts against the cap and the text limit, waits for one in flight, and goes only after
        the instance has been silent its drawn gap since its last landing."""
        with conn.transaction():
            if phone is not None and self._not_on_whatsapp(conn, phone):
                self.log.info("skip: the number answered exists:false before (never tried again)",
                              extra={"phone_suffix": phone[-4:]})
                return Skip("the number is not on WhatsApp (remembered; never tried again)")
            digest = text_hash(text) if text is not None else None
            statuses = self.statuses(conn, now, digest, quiet)
            self._metrics(statuses)
            ready = [s for s in statuses if s.eligible]
            if not ready:
                return self._wait(statuses)
            # Most remaining quota first, then least recently used, then name (stable).
            best = min(ready, key=lambda s: (-((s.cap or 0) - s.sent), s.last_send_at or float("-inf"),
                                             s.instance))
            return self._take(conn, best, now, digest, phone, quiet)

    def _wait(self, statuses: list[Status]) -> Wait:
        times = [s.next_slot for s in statuses if s.waiting and s.next_slot is not None]
        if not statuses:
            reason = f"no instances listed for {self.service}"
        else:
            reason = "; ".join(f"{s.instance}: {s.why}" for s in statuses)
        until = min(times) if times else None
        if reason != self._last_wait:
            self._last_wait = reason
            self.log.info("wait", extra={"until": until, "reason": reason})
        return Wait(until, reason)

    def _take(self, conn: psycopg.Connection, s: Status, now: float, digest: bytes | None,
              phone: str | None, quiet: bool = False) -> Lease:
        r = self.rules
        seq = s.seq + 1
        delay = 0 if quiet else gap_ms(r, s.seed, seq)   # quiet: the gap was the silence before
        lands = now + delay / 1000
        batch = s.batch_count + 1
        free = lands
        if r.batch_size and batch >= r.batch_size:
            batch = 0
            free = lands + pause_s(r, s.seed, seq)
        free = max(free, now + r.min_gap)
        token = uuid.uuid4().hex
        self._update(conn, s.instance, seq=seq, batch_count=batch, free_at=_ts(free), lease_token=token,
                     lease_lands_at=_ts(lands), lease_until=_ts(lands + r.lease_for))
        if s.cap is not None:
            conn.execute("UPDATE antiban_days SET sent = sent + 1 WHERE instance = %s AND day = %s",
                         (s.instance, self.cal.day(now)))
        conn.execute("INSERT INTO antiban_sends (instance, token, text_hash, reserved_at, lands_at) "
                     "VALUES (%s, %s, %s, %s, %s)", (s.instance, token, digest, _ts(now), _ts(lands)))
        self._last_wait = ""
        self.log.info("send now", extra={
            "instance": s.instance, "delay_ms": delay, "lands_at": lands,
            "reason": f"most remaining quota ({(s.cap or 0) - s.sent} of {s.cap} left today, "
                      f"{STAGE_NAMES[s.stage]}), least recently used"
                      + (f"; batch pause after this one until {self.when(free)}"
                         if batch == 0 and r.batch_size else "")})
        return Lease(s.instance, token, delay, now, lands, phone, (_ts(s.free_at), s.batch_count))

    def cancel(self, conn: psycopg.Connection, lease: Lease) -> None:
        """Undo a reservation nothing was sent for (outside a transaction that rolled back)."""
        with conn.transaction():
            cur = conn.execute("UPDATE antiban_instances SET lease_token = NULL, lease_lands_at = NULL, "
                               "lease_until = NULL, free_at = %s, batch_count = %s WHERE instance = %s "
                               "AND lease_token = %s", (*lease._undo, lease.instance, lease.token))
            if cur.rowcount:
                conn.execute("UPDATE antiban_days SET sent = greatest(sent - 1, 0) WHERE instance = %s "
                             "AND day = %s", (lease.instance, self.cal.day(lease.at)))
                conn.execute("DELETE FROM antiban_sends WHERE token = %s", (lease.token,))

    def release(self, conn: psycopg.Connection, lease: Lease, error: Any, now: float,
                message_id: str | None = None) -> None:
        """The send's outcome (error: EvolutionError | None): frees the instance, counts failures
        (leaving rotation above 30 % of the last 10), remembers exists:false numbers."""
        from oraclewad.services.evolution import FailureKind

        kind = getattr(error, "kind", None)
        with conn.transaction():
            conn.execute("UPDATE antiban_instances SET lease_token = NULL, lease_lands_at = NULL, "
                         "lease_until = NULL WHERE instance = %s AND lease_token = %s",
                         (lease.instance, lease.token))
            if error is None:
                conn.execute("UPDATE antiban_instances SET last_send_at = greatest(last_send_at, %s) "
                             "WHERE instance = %s", (_ts(min(lease.lands_at, now)), lease.instance))
            ok = None if kind in (FailureKind.AMBIGUOUS, FailureKind.NOT_ON_WHATSAPP) else error is None
            conn.execute("UPDATE antiban_sends SET ok = %s, message_id = %s WHERE token = %s",
                         (ok, message_id, lease.token))
            if kind == FailureKind.NOT_ON_WHATSAPP and lease.phone:
                conn.execute("INSERT INTO antiban_invalid_numbers (phone, instance, noted_at) "
                             "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                             (lease.phone, lease.instance, _ts(now)))
                if self.numbers is not None:
                    self.numbers.add_sync(lease.phone, lease.instance, now)
                self._event(lease.instance, "number_invalid", "exists:false: the number is remembered and "
                            "never tried again", phone_suffix=lease.phone[-4:])
            if ok is False:
                last = [r[0] for r in conn.execute(
                    "SELECT ok FROM antiban_sends WHERE instance = %s AND ok IS NOT NULL ORDER BY id DESC "
                    "LIMIT %s", (lease.instance, FAILURE_WINDOW)).fetchall()]
                failed = sum(1 for x in last if not x)
                if failed > FAILURE_RATIO * FAILURE_WINDOW:
                    cur = conn.execute("UPDATE antiban_instances SET out_reason = %s WHERE instance = %s AND "
                                       "out_reason IS NULL",
                                       (f"{failed} of its last {len(last)} sends failed", lease.instance))
                    if cur.rowcount:
                        self._event(lease.instance, "left_rotation",
                                    f"out of rotation: {failed} of its last {len(last)} sends failed")
        self.instances.note_send(lease.instance, error)

    # ---- operator and events in --------------------------------------------------------------

    def note_upsert(self, conn: psycopg.Connection, instance: str, message_id: str | None,
                    from_me: bool, now: float) -> bool:
        """A messages.upsert: a fromMe message we did not send counts as a manual message (only
        while the instance still needs them, so a send of ours not yet recorded cannot count)."""
        if not from_me or not message_id or instance not in self.names or not self.rules.manual_messages:
            return False
        with conn.transaction():
            row = conn.execute("SELECT manual_count FROM antiban_instances WHERE instance = %s FOR UPDATE",
                               (instance,)).fetchone()
            if row is None:
                self.ensure(conn)
                row = (0,)
            if row[0] >= self.rules.manual_messages:
                return False
            if conn.execute("SELECT 1 FROM antiban_sends WHERE message_id = %s", (message_id,)).fetchone():
                return False
            cur = conn.execute("INSERT INTO antiban_manual (instance, message_id) VALUES (%s, %s) "
                               "ON CONFLICT DO NOTHING", (instance, message_id))
            if not cur.rowcount:
                return False
            conn.execute("UPDATE antiban_instances SET manual_count = manual_count + 1 WHERE instance = %s",
                         (instance,))
        self.log.info("manual message counted", extra={"instance": instance, "count": row[0] + 1,
                                                       "needed": self.rules.manual_messages})
        return True

    def attest(self, conn: psycopg.Connection, instance: str, *, network: str | None, groups: int | None,
               recharge: date | None, now: float) -> dict[str, Any]:
        with conn.transaction():
            self._rows(conn)
            conn.execute("UPDATE antiban_instances SET attest_network = coalesce(%s, attest_network), "
                         "attest_groups = coalesce(%s, attest_groups), "
                         "attest_recharge = coalesce(%s, attest_recharge), attested_at = %s "
                         "WHERE instance = %s",
                         (network, groups, recharge, _ts(now), instance))
            row = conn.execute("SELECT attest_network, attest_groups, attest_recharge FROM antiban_instances "
                               "WHERE instance = %s", (instance,)).fetchone()
        assert row is not None
        self.log.info("attestation recorded", extra={
            "instance": instance, "network": row[0], "groups": row[1],
            "recharge": row[2].isoformat() if row[2] else None})
        return {"instance": instance, "network": row[0], "groups": row[1],
                "recharge": row[2].isoformat() if row[2] else None}

    def observe(self, conn: psycopg.Connection, now: float) -> list[Status]:
        """Call every few seconds: records first opens (standby), idle drop-backs, metrics."""
        with conn.transaction():
            statuses = self.statuses(conn, now)
        self._metrics(statuses)
        return statuses

    def explain(self, conn: psycopg.Connection, now: float) -> list[dict[str, Any]]:
        return [s.public(self.service) for s in self.observe(conn, now)]

    def _not_on_whatsapp(self, conn: psycopg.Connection, phone: str) -> bool:
        """Answered exists:false before, to this service or (the tenant's list) to its other one."""
        if conn.execute("SELECT 1 FROM antiban_invalid_numbers WHERE phone = %s", (phone,)).fetchone():
            return True
        return self.numbers is not None and self.numbers.contains_sync(phone)

    def forecast(self, conn: psycopg.Connection, now: float, pending: int) -> _forecast.Forecast:
        """When the last of `pending` messages would land, replaying the engine's own schedule."""
        statuses = self.observe(conn, now)
        return _forecast.run(self.rules, self.cal, statuses, now, pending)


__all__ = ["DAY", "Engine", "Lease", "Skip", "Status", "Wait"]
