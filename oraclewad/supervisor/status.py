"""What the supervisor reports: service status, state-change events, the outcome of apply()."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """A service's state, as status, events and /metrics show it. The first seven are the
    supervisor's (a process or its absence); the last three the fleet's, before any process."""

    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"     # running, but its readiness checks fail (message: the failing check)
    BACKOFF = "backoff"
    DEGRADED = "degraded"       # waiting to retry at the cap delay: the breaker tripped
    STOPPING = "stopping"
    STOPPED = "stopped"
    UNAVAILABLE = "unavailable"  # its provisioning waits for PostgreSQL or Redis (message: why)
    PENDING = "pending"         # provisioned, its process not started yet
    INVALID = "invalid"         # its tenant file is invalid (message: the problems)


STARTING, RUNNING, UNHEALTHY = State.STARTING, State.RUNNING, State.UNHEALTHY
STOPPING, STOPPED, BACKOFF, DEGRADED = State.STOPPING, State.STOPPED, State.BACKOFF, State.DEGRADED
STATES = (STARTING, RUNNING, UNHEALTHY, STOPPING, STOPPED, BACKOFF, DEGRADED)   # the supervisor's
UP = frozenset({RUNNING, UNHEALTHY})    # a process that became ready and still runs
# Why an automatic restart happened: exited (any code), killed by a signal we did not send, no
# READY=1 within the start deadline, no WATCHDOG=1, or the spawn itself failed.
RESTART_REASONS = ("exit", "signal", "start_timeout", "watchdog", "spawn_failed")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    group: str
    state: State                # one of STATES
    pid: int | None
    started_at: float | None    # wall clock (unix time) of the current process's spawn
    uptime: float | None        # seconds since that spawn; None without a process
    restarts: int               # automatic restarts after unexpected exits
    ready: bool                 # READY=1 received (or spawned, for notify=False) and not unhealthy
    last_exit: str              # "exit 1", "killed by SIGKILL", "" before any exit
    message: str                # the child's last STATUS=, or why the supervisor acted
    labels: tuple[tuple[str, str], ...] = ()
    degraded: bool = False      # breaker tripped; cleared once the service stays up past the reset
    # For metrics: restarts counted by what caused them (RESTART_REASONS), the last exit's code
    # (negative: the signal that killed it), spawn -> READY of the current process, log output.
    restart_reasons: tuple[tuple[str, int], ...] = ()
    exit_code: int | None = None
    start_seconds: float | None = None
    log_bytes: int = 0
    spawn: str = ""             # how the current process was started: "fork" | "exec" ("" without one)
    spawn_note: str = ""        # spawn = "fork" but exec'd: why (the release's template cannot start)


@dataclass(frozen=True)
class ServiceEvent:
    """A state change of one service (also sent when the breaker trips or clears)."""

    name: str
    group: str
    state: str
    previous: str
    pid: int | None
    at: float                   # wall clock
    message: str
    restarts: int
    degraded: bool


@dataclass(frozen=True)
class Changes:
    """What apply() did, by service name (each tuple sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()     # spec changed: restarted if running, else used at next start
    unchanged: tuple[str, ...] = ()
