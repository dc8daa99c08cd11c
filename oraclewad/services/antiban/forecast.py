"""The ETA: replays the schedule the engine will play for N more messages.

Each instance's timeline only depends on its own state and draws (gaps, batch pauses and daily
caps are hashes of its seed), and a sender with messages waiting takes every slot as it comes, so
the first N reservations of the merged timelines are the ones the engine will hand out. Unknown
to it: send latency, future instance events (a ban, a reconnect) and the same-text limit.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

from oraclewad.services.antiban.rules import Calendar, Rules, cap_for, gap_ms, pause_s

if TYPE_CHECKING:
    from oraclewad.services.antiban.engine import Status

HORIZON = 400 * 86400.0   # a forecast never looks further than this


@dataclass(frozen=True)
class Forecast:
    finish_at: float | None          # when the last of the N messages lands (None: never, see reason)
    pending: int
    per_instance: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def seconds(self, now: float) -> float | None:
        return None if self.finish_at is None else max(self.finish_at - now, 0.0)


@dataclass
class _Timeline:
    name: str
    seed: int
    seq: int
    batch: int
    warm_day: date | None
    today: date
    cap_today: int | None
    sent: dict[date, int]


def _stage(warm_day: date | None, d: date) -> int:
    if warm_day is None or d < warm_day:
        return 1
    return min((d - warm_day).days + 1, 4)


def run(rules: Rules, cal: Calendar, statuses: list[Status], now: float, pending: int) -> Forecast:
    if pending <= 0:
        return Forecast(now, 0)
    heap: list[tuple[float, int]] = []
    lines: list[_Timeline] = []
    blocked: list[str] = []
    today = cal.day(now)
    for s in statuses:
        needs_manual = rules.manual_messages and s.extra.get("manual_messages", 0) < rules.manual_messages
        if s.eligible:
            start = now
        elif s.waiting and s.next_slot is not None and not needs_manual:
            start = max(s.next_slot, now)
        else:
            blocked.append(f"{s.instance}: {s.why}")
            continue
        lines.append(_Timeline(s.instance, s.seed, s.seq, s.batch_count, s.warm_day, today, s.cap,
                               {today: s.sent}))
        heapq.heappush(heap, (start, len(lines) - 1))
    if not lines:
        return Forecast(None, pending, {}, "no instance can send: " + "; ".join(blocked))

    caps: dict[tuple[int, date], int] = {}

    def cap(line: _Timeline, d: date) -> int:
        if d == line.today and line.cap_today is not None:
            return line.cap_today
        key = (id(line), d)
        if key not in caps:
            caps[key] = cap_for(rules, line.seed, d, _stage(line.warm_day, d))
        return caps[key]

    counts = dict.fromkeys((line.name for line in lines), 0)
    finish = now
    done = 0
    limit = now + HORIZON
    one_day = timedelta(days=1)
    while heap and done < pending:
        t, i = heapq.heappop(heap)
        if t > limit:
            break
        line = lines[i]
        d = cal.day(t)
        if line.sent.get(d, 0) >= cap(line, d):
            heapq.heappush(heap, (cal.open_at(cal.day_start(d + one_day)), i))
            continue
        delay = gap_ms(rules, line.seed, line.seq + 1) / 1000
        opens = cal.open_at(t, t + delay)
        if opens > t:
            heapq.heappush(heap, (opens, i))
            continue
        line.seq += 1
        line.sent[d] = line.sent.get(d, 0) + 1
        lands = t + delay
        free = lands
        line.batch += 1
        if rules.batch_size and line.batch >= rules.batch_size:
            line.batch = 0
            free = lands + pause_s(rules, line.seed, line.seq)
        free = max(free, t + rules.min_gap)
        finish = max(finish, lands)
        done += 1
        counts[line.name] += 1
        heapq.heappush(heap, (free, i))
    if done < pending:
        return Forecast(None, pending, counts, f"only {done} of {pending} fit in {HORIZON / 86400:.0f} days")
    return Forecast(finish, pending, counts, "; ".join(blocked) and "not counted: " + "; ".join(blocked))
