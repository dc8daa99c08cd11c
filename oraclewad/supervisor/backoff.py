"""Restart delays and the circuit breaker: pure logic, times are passed in (no clock, no I/O)."""

from __future__ import annotations

import random
from collections import deque

from oraclewad.settings import Policy


class Backoff:
    """Delay before restart n (1-based) = min(initial * 2**(n-1), max) +- jitter.

    Except the first failure of a streak of a process that had been READY for `min_uptime`: it is
    restarted at once (delay 0), as supervisord restarts a process that got past startsecs. A
    service that had been serving fine and crashed once should be back in milliseconds; only a
    loop (the next failure before `backoff_reset_after` of uptime) waits, from backoff_initial on.
    That immediate restart still counts for the breaker, so a loop cannot run hot.

    The breaker trips when `breaker_restarts` restarts fall within `breaker_window`; a tripped
    breaker keeps retrying at the cap (degraded, never given up). Both the doubling and the
    breaker reset once the service has stayed up for `backoff_reset_after`.
    """

    def __init__(self, policy: Policy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self.failures = 0                       # consecutive, since the last reset
        self._immediate = 0                     # of those, restarted at once (not doubled)
        self.tripped = False
        self._restarts: deque[float] = deque()  # times of recent restarts, for the breaker

    def base_delay(self, n: int) -> float:
        """The un-jittered delay before restart n (1-based), tripped breaker aside."""
        p = self.policy
        # Cap the exponent: 2**n overflows a float long before a service stops crash-looping.
        return min(p.backoff_initial * 2 ** min(n - 1, 64), p.backoff_max)

    def failure(self, now: float, up_for: float | None = None) -> float:
        """Record an unexpected exit at `now` of a process that had been READY for `up_for`
        seconds (None: it never was); returns how long to wait before the next start."""
        p = self.policy
        immediate = self.failures == 0 and up_for is not None and up_for >= p.min_uptime
        self.failures += 1
        self._restarts.append(now)
        while self._restarts and self._restarts[0] <= now - p.breaker_window:
            self._restarts.popleft()
        if len(self._restarts) >= p.breaker_restarts:
            self.tripped = True
        if self.tripped:
            delay = p.backoff_max
        elif immediate:
            self._immediate = 1
            return 0.0
        else:
            delay = self.base_delay(self.failures - self._immediate)
        if p.backoff_jitter:
            delay *= 1 + self._rng.uniform(-p.backoff_jitter, p.backoff_jitter)
        return max(delay, 0.0)

    def reset_due(self, running_since: float) -> float:
        """When a process up since `running_since` has earned a reset."""
        return running_since + self.policy.backoff_reset_after

    def reset(self) -> bool:
        """The service stayed up long enough: start over. Returns whether it was degraded."""
        was = self.tripped
        self.failures = 0
        self._immediate = 0
        self.tripped = False
        self._restarts.clear()
        return was
