"""Which instance may send next: the interface the anti-ban engine will implement, and a simple pacer.

The sender asks `acquire(now)` for a lease on an instance before it claims a message, gives it
back with `cancel` when there was nothing to send, and reports the outcome with `release`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo


class InstanceView(Protocol):
    """What the pacer needs of the service's instance states (services/instances.py)."""

    def can_send(self, name: str) -> bool: ...

    def note_send(self, name: str, error: object) -> None: ...


@dataclass(frozen=True)
class Lease:
    instance: str
    at: float
    _previous_last: float | None


class Pacer(Protocol):
    def acquire(self, now: float) -> Lease | None: ...

    def cancel(self, lease: Lease) -> None: ...

    def release(self, lease: Lease, error: object) -> None: ...

    def next_free(self, now: float) -> float | None: ...

    def why_not(self, now: float) -> str: ...


class SimplePacer:
    """Per instance: a minimum gap between sends, a daily cap (tenant's calendar day), at most one
    send in flight, and only instances that are open and in rotation. Round-robin among those."""

    def __init__(self, names: Iterable[str], instances: InstanceView, *, min_gap: float, daily_cap: int,
                 time_zone: str, sent_today: dict[str, int] | None = None,
                 last_sends: dict[str, float] | None = None) -> None:
        self.names = list(names)
        self.instances = instances
        self.min_gap = min_gap
        self.daily_cap = daily_cap
        self.zone = ZoneInfo(time_zone)
        self.count = dict.fromkeys(self.names, 0) | (sent_today or {})
        self.last = dict(last_sends or {})
        self.in_flight: set[str] = set()
        self._day: str | None = None
        self._turn = 0

    def _roll(self, now: float) -> None:
        day = datetime.fromtimestamp(now, self.zone).date().isoformat()
        if self._day is not None and day != self._day:
            self.count = dict.fromkeys(self.names, 0)
        self._day = day

    def _eligible(self, name: str, now: float) -> bool:
        return (name not in self.in_flight and self.instances.can_send(name)
                and self.count.get(name, 0) < self.daily_cap
                and now >= self.last.get(name, float("-inf")) + self.min_gap)

    def acquire(self, now: float) -> Lease | None:
        self._roll(now)
        n = len(self.names)
        for i in range(n):
            name = self.names[(self._turn + i) % n]
            if self._eligible(name, now):
                self._turn = (self._turn + i + 1) % n
                lease = Lease(name, now, self.last.get(name))
                self.in_flight.add(name)
                self.last[name] = now
                self.count[name] = self.count.get(name, 0) + 1
                return lease
        return None

    def cancel(self, lease: Lease) -> None:
        self.in_flight.discard(lease.instance)
        self.count[lease.instance] -= 1
        if lease._previous_last is None:
            self.last.pop(lease.instance, None)
        else:
            self.last[lease.instance] = lease._previous_last

    def release(self, lease: Lease, error: object) -> None:
        self.in_flight.discard(lease.instance)
        self.instances.note_send(lease.instance, error)

    def next_free(self, now: float) -> float | None:
        """When the minimum gap next lets an open instance send (None: none will by waiting)."""
        times = [self.last.get(n, float("-inf")) + self.min_gap for n in self.names
                 if n not in self.in_flight and self.instances.can_send(n)
                 and self.count.get(n, 0) < self.daily_cap]
        return max(min(times), now) if times else None

    def why_not(self, now: float) -> str:
        if not self.names:
            return "no instances configured for this service"
        parts = []
        for n in self.names:
            if not self.instances.can_send(n):
                parts.append(f"{n}: not open or out of rotation")
            elif n in self.in_flight:
                parts.append(f"{n}: sending")
            elif self.count.get(n, 0) >= self.daily_cap:
                parts.append(f"{n}: daily cap {self.daily_cap} reached")
            else:
                parts.append(f"{n}: minimum gap")
        return "; ".join(parts)


Clock = Callable[[], float]
