"""The broadcast service's PostgreSQL work: one function per transaction, each taking a connection.

Times are passed in (the service's clock), never taken from now(), so a campaign can run on a
test clock and the database agrees with the sender about what is due.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from oraclewad.services.broadcast.recipients import Row
from oraclewad.services.outbox import Outbox, ts

STATUSES = ("pending", "sending", "sent", "delivered", "read", "failed", "invalid", "suppressed",
            "uncertain", "cancelled")
DONE = ("sent", "delivered", "read")                       # Evolution accepted it
FINAL = ("completed", "cancelled")
EDITABLE = ("draft", "scheduled", "paused")                # templates and recipients may change
# Outcomes, the stale sweep and ack matching (held_acks, migration 0004): services/outbox. Test
# messages' ids are ours too: their acks are no recipient's.
OUTBOX = Outbox("recipients", "broadcast-ack:", also_ours=("campaign_tests",))


class Conflict(ValueError):
    """The campaign is not in a state that allows this (409); str() says which and what to do."""


class NotFound(LookupError):
    pass


def _epoch(at: datetime | None) -> float | None:
    return at.timestamp() if at else None


# ---- campaigns -------------------------------------------------------------------------------

def create(conn: psycopg.Connection, name: str, templates: Any, now: float) -> int:
    row = conn.execute("INSERT INTO campaigns (name, templates, created_at, updated_at)"
                       " VALUES (%s, %s::jsonb, %s, %s) RETURNING id",
                       (name, json.dumps(templates), ts(now), ts(now))).fetchone()
    assert row is not None
    return int(row[0])


def campaign(conn: psycopg.Connection, campaign_id: int, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, name, templates, status, scheduled_at, created_at, started_at, finished_at,"
        " paused_at, columns, eta_at_start, last_eta FROM campaigns WHERE id = %s"
        + (" FOR UPDATE" if lock else ""), (campaign_id,)).fetchone()
    if row is None:
        raise NotFound(f"no campaign {campaign_id}: `oraclectl campaign list ID` shows them")
    keys = ("id", "name", "templates", "status", "scheduled_at", "created_at", "started_at",
            "finished_at", "paused_at", "columns", "eta_at_start", "last_eta")
    out = dict(zip(keys, row, strict=True))
    for k in ("scheduled_at", "created_at", "started_at", "finished_at", "paused_at", "eta_at_start",
              "last_eta"):
        out[k] = _epoch(out[k])
    return out


def counts(conn: psycopg.Connection, campaign_id: int) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM recipients WHERE campaign_id = %s GROUP BY status",
                        (campaign_id,)).fetchall()
    return {s: n for s, n in rows}


def all_counts(conn: psycopg.Connection) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for cid, status, n in conn.execute("SELECT campaign_id, status, count(*) FROM recipients"
                                       " GROUP BY campaign_id, status").fetchall():
        out.setdefault(cid, {})[status] = n
    return out


def listing(conn: psycopg.Connection) -> list[dict[str, Any]]:
    ids = [r[0] for r in conn.execute("SELECT id FROM campaigns ORDER BY id").fetchall()]
    by = all_counts(conn)
    return [{**campaign(conn, i), "counts": by.get(i, {})} for i in ids]


def edit(conn: psycopg.Connection, campaign_id: int, name: str | None, templates: Any | None,
         now: float) -> None:
    with conn.transaction():
        c = campaign(conn, campaign_id, lock=True)
        if templates is not None and c["status"] not in EDITABLE:
            raise Conflict(f"campaign {campaign_id} is {c['status']}: pause it first "
                           f"(`oraclectl campaign pause`) to change its templates")
        conn.execute("UPDATE campaigns SET name = COALESCE(%s, name),"
                     " templates = COALESCE(%s::jsonb, templates), updated_at = %s WHERE id = %s",
                     (name, json.dumps(templates) if templates is not None else None, ts(now), campaign_id))
        if templates is not None:
            # Never tried: drawn again from the new templates. A recipient whose send was tried
            # (a retry waits) keeps its text, so a retry never sends something else.
            conn.execute("UPDATE recipients SET body = NULL WHERE campaign_id = %s AND status = 'pending'"
                         " AND attempts = 0", (campaign_id,))


def transition(conn: psycopg.Connection, campaign_id: int, action: str, now: float,
               at: float | None = None) -> dict[str, Any]:
    """start (now, or at `at`), pause, resume, cancel. Returns the campaign as it now is."""
    with conn.transaction():
        c = campaign(conn, campaign_id, lock=True)
        status = c["status"]
        if action == "start":
            if status not in ("draft", "scheduled"):
                hint = "resume it" if status == "paused" else "create a new one"
                raise Conflict(f"campaign {campaign_id} is {status}, not draft: {hint}")
            if at is not None and at > now:
                conn.execute("UPDATE campaigns SET status = 'scheduled', scheduled_at = %s, updated_at = %s"
                             " WHERE id = %s", (ts(at), ts(now), campaign_id))
            else:
                conn.execute("UPDATE campaigns SET status = 'running', started_at = %s, scheduled_at = NULL,"
                             " updated_at = %s WHERE id = %s", (ts(now), ts(now), campaign_id))
        elif action == "pause":
            if status not in ("running", "scheduled"):
                raise Conflict(f"campaign {campaign_id} is {status}: only a running or scheduled one pauses")
            conn.execute("UPDATE campaigns SET status = 'paused', paused_at = %s, updated_at = %s"
                         " WHERE id = %s", (ts(now), ts(now), campaign_id))
        elif action == "resume":
            if status != "paused":
                raise Conflict(f"campaign {campaign_id} is {status}, not paused")
            # A campaign paused before its scheduled time goes back to waiting for it.
            back = "scheduled" if c["started_at"] is None and c["scheduled_at"] else "running"
            conn.execute("UPDATE campaigns SET status = %s, paused_at = NULL, updated_at = %s,"
                         " started_at = CASE WHEN %s = 'running' THEN COALESCE(started_at, %s)"
                         " ELSE started_at END WHERE id = %s",
                         (back, ts(now), back, ts(now), campaign_id))
        elif action == "cancel":
            if status in FINAL:
                raise Conflict(f"campaign {campaign_id} is already {status}")
            conn.execute("UPDATE campaigns SET status = 'cancelled', finished_at = %s, updated_at = %s"
                         " WHERE id = %s", (ts(now), ts(now), campaign_id))
            # Rows already claimed (sending) keep their outcome; only waiting ones are cancelled.
            conn.execute("UPDATE recipients SET status = 'cancelled', reason = 'campaign cancelled',"
                         " status_at = %s WHERE campaign_id = %s AND status = 'pending'",
                         (ts(now), campaign_id))
        else:
            raise ValueError(action)
        return campaign(conn, campaign_id)


def set_eta(conn: psycopg.Connection, campaign_id: int, eta: float | None, first: bool) -> None:
    conn.execute("UPDATE campaigns SET last_eta = %s,"
                 " eta_at_start = CASE WHEN %s THEN COALESCE(eta_at_start, %s) ELSE eta_at_start END"
                 " WHERE id = %s", (ts(eta) if eta else None, first, ts(eta) if eta else None, campaign_id))


def tick(conn: psycopg.Connection, now: float) -> list[tuple[int, str]]:
    """Scheduled campaigns whose time came start; running ones with nothing left complete."""
    changed: list[tuple[int, str]] = []
    for (cid,) in conn.execute("UPDATE campaigns SET status = 'running', started_at = %s, updated_at = %s"
                               " WHERE status = 'scheduled' AND scheduled_at <= %s RETURNING id",
                               (ts(now), ts(now), ts(now))).fetchall():
        changed.append((cid, "running"))
    for (cid,) in conn.execute(
            "UPDATE campaigns c SET status = 'completed', finished_at = %s, updated_at = %s"
            " WHERE status = 'running' AND NOT EXISTS (SELECT 1 FROM recipients r WHERE"
            " r.campaign_id = c.id AND r.status IN ('pending', 'sending')) RETURNING id",
            (ts(now), ts(now))).fetchall():
        changed.append((cid, "completed"))
    return changed


def campaigns_in_sight(conn: psycopg.Connection, before: float) -> bool:
    """A campaign running, or scheduled to start before `before`: the sweep ticks and keeps its
    short cadence."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM campaigns WHERE status = 'running'"
                       " OR (status = 'scheduled' AND scheduled_at <= %s))", (ts(before),)).fetchone()
    return bool(row and row[0])


# ---- import ----------------------------------------------------------------------------------

def import_rows(conn: psycopg.Connection, campaign_id: int, rows: list[Row], columns: list[str],
                suppressed: set[str], where: str, now: float) -> dict[str, Any]:
    """The new numbers COPY straight into recipients; a number the campaign already has is a
    duplicate (re-importing a file changes nothing). The campaign row's lock serialises imports."""
    with conn.transaction():
        c = campaign(conn, campaign_id, lock=True)
        if c["status"] not in EDITABLE:
            raise Conflict(f"campaign {campaign_id} is {c['status']}: recipients can be added to a draft, "
                           "scheduled or paused campaign (`oraclectl campaign pause` first)")
        blocked = [{where: r.line, "phone": r.phone} for r in rows if r.phone in suppressed]
        keep = [r for r in rows if r.phone not in suppressed]
        known = {p for (p,) in conn.execute(
            "SELECT phone FROM recipients WHERE campaign_id = %s AND phone = ANY(%s)",
            (campaign_id, [r.phone for r in keep])).fetchall()} if _has_any(conn, campaign_id) else set()
        duplicate = [{where: r.line, "phone": r.phone, "reason": "already a recipient of this campaign"}
                     for r in keep if r.phone in known]
        fresh = [r for r in keep if r.phone not in known]
        at = ts(now)
        with conn.cursor().copy("COPY recipients (campaign_id, phone, name, vars, line, status_at)"
                                " FROM STDIN") as copy:
            for r in fresh:
                values = json.dumps(r.vars, ensure_ascii=False) if r.vars else "{}"
                copy.write_row((campaign_id, r.phone, r.name, values, r.line, at))
        merged = list(c["columns"] or []) + [k for k in columns if k not in (c["columns"] or [])]
        conn.execute("UPDATE campaigns SET columns = %s::jsonb, updated_at = %s WHERE id = %s",
                     (json.dumps(merged), at, campaign_id))
        return {"accepted": len(fresh), "duplicate": duplicate, "suppressed": blocked}


def _has_any(conn: psycopg.Connection, campaign_id: int) -> bool:
    return conn.execute("SELECT 1 FROM recipients WHERE campaign_id = %s LIMIT 1",
                        (campaign_id,)).fetchone() is not None


def sample_recipient(conn: psycopg.Connection,
                     campaign_id: int) -> tuple[str, str, dict[str, str]] | None:
    row = conn.execute("SELECT phone, name, vars FROM recipients WHERE campaign_id = %s ORDER BY id LIMIT 1",
                       (campaign_id,)).fetchone()
    return (row[0], row[1], row[2]) if row else None


def record_test(conn: psycopg.Connection, campaign_id: int, phone: str, body: str, instance: str | None,
                provider_id: str | None, status: str, now: float) -> None:
    conn.execute("INSERT INTO campaign_tests (campaign_id, phone, body, instance, provider_message_id,"
                 " status, at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (campaign_id, phone, body, instance, provider_id, status, ts(now)))


# ---- sender side -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Due:
    id: int
    campaign_id: int
    phone: str
    name: str
    vars: dict[str, str]
    body: str | None
    templates: Any


@dataclass(frozen=True)
class Claimed:
    id: int
    campaign_id: int
    phone: str
    body: str
    instance: str


def due(conn: psycopg.Connection, now: float, limit: int, turns: list[int] | None = None) -> list[Due]:
    """Lock up to `limit` pending recipients of running campaigns (SKIP LOCKED: another process's
    rows are skipped), in import order within a campaign, round robin between campaigns: the
    first of each, then the second of each... Campaigns take turns in the order `turns` gives
    (least recently served first; one not listed before all, oldest first)."""
    rows = conn.execute(
        "SELECT r.id, r.campaign_id, r.phone, r.name, r.vars, r.body, c.templates FROM"
        " (SELECT id, templates, started_at FROM campaigns WHERE status = 'running') c"
        " CROSS JOIN LATERAL (SELECT id, campaign_id, phone, name, vars, body FROM recipients"
        "  WHERE campaign_id = c.id AND status = 'pending' AND (send_after IS NULL OR send_after <= %s)"
        "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) r"
        " ORDER BY row_number() OVER (PARTITION BY c.id ORDER BY r.id),"
        " coalesce(array_position(%s::bigint[], c.id), 0), c.started_at, c.id LIMIT %s",
        (ts(now), limit, turns or [], limit)).fetchall()
    return [Due(*r) for r in rows]


def claim(conn: psycopg.Connection, msg: Due, body: str, instance: str, worker: str, now: float) -> Claimed:
    conn.execute("UPDATE recipients SET status = 'sending', body = %s, instance = %s, claimed_by = %s,"
                 " claimed_at = %s, attempts = attempts + 1, status_at = %s WHERE id = %s",
                 (body, instance, worker, ts(now), ts(now), msg.id))
    return Claimed(msg.id, msg.campaign_id, msg.phone, body, instance)


def keep_body(conn: psycopg.Connection, recipient_id: int, body: str) -> None:
    """The text drawn for a recipient is kept even when it waits: a later try sends the same."""
    conn.execute("UPDATE recipients SET body = %s WHERE id = %s AND body IS NULL", (body, recipient_id))


def next_due(conn: psycopg.Connection) -> float | None:
    """When a pending recipient of a running campaign is next due (now if one is), or a scheduled
    campaign starts; None when nothing waits."""
    row = conn.execute(
        "SELECT min(COALESCE(r.send_after, to_timestamp(0))) FROM recipients r JOIN campaigns c"
        " ON c.id = r.campaign_id WHERE c.status = 'running' AND r.status = 'pending'").fetchone()
    sched = conn.execute("SELECT min(scheduled_at) FROM campaigns WHERE status = 'scheduled'").fetchone()
    times = []
    if row and row[0] is not None:
        times.append(row[0].timestamp())
    if sched and sched[0] is not None:
        times.append(sched[0].timestamp())
    return min(times) if times else None


def pending_by_campaign(conn: psycopg.Connection) -> dict[int, int]:
    """Recipients still to send (pending or in flight) of running campaigns, in send order."""
    rows = conn.execute("SELECT r.campaign_id, count(*) FROM recipients r JOIN campaigns c"
                        " ON c.id = r.campaign_id WHERE c.status = 'running'"
                        " AND r.status IN ('pending', 'sending') GROUP BY r.campaign_id").fetchall()
    return {cid: n for cid, n in rows}


def running_order(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM campaigns WHERE status = 'running'"
                                       " ORDER BY started_at, id").fetchall()]
