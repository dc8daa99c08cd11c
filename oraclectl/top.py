"""`oraclectl top`: a live, sortable view of every service, like `pm2 monit` or `htop`.

curses from the standard library: nothing to install, and it restores the terminal on every
way out (q, Ctrl-C, an error). A thread asks the daemon for Status and Metrics every interval
(keys answer at once however slow the daemon is); rates (CPU %, messages per minute) are the
change between two answers.
"""

from __future__ import annotations

import curses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oraclectl.render import DASH, duration, size
from oraclewad._proto.oraclewa.v1 import control_pb2 as pb

Fetch = Callable[[], tuple[Sequence[Any], Sequence[Any]]]   # -> (ServiceState list, ServiceMetrics list)

KEYS = "n tenant  s state  c cpu  m memory  r restarts  g msgs/min  o outbox  (again: reverse)  q quit"


@dataclass
class Row:
    tenant: str
    service: str
    state: str
    pid: int | None
    cpu: float | None           # percent of one core since the last refresh
    rss: float | None
    restarts: int
    msgs_min: float | None
    outbox: float | None
    uptime: float | None


# key -> (label, sort key); None sorts last whichever the direction.
SORTS: dict[str, tuple[str, Callable[[Row], Any]]] = {
    "n": ("tenant", lambda r: (r.tenant.lower(), r.service)),
    "s": ("state", lambda r: (r.state, r.tenant.lower(), r.service)),
    "c": ("cpu", lambda r: r.cpu),
    "m": ("memory", lambda r: r.rss),
    "r": ("restarts", lambda r: r.restarts),
    "g": ("msgs/min", lambda r: r.msgs_min),
    "o": ("outbox", lambda r: r.outbox),
}
COLUMNS = (("TENANT", 20), ("SERVICE", 10), ("STATE", 11), ("PID", 8), ("CPU%", 6), ("MEM", 9),
           ("RESTARTS", 8), ("MSG/MIN", 8), ("OUTBOX", 7), ("UPTIME", 8))


class Rates:
    """Turns counters from successive refreshes into per-interval rates."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[tuple[str, str, str], tuple[float, float, int | None]] = {}

    def rate(self, key: tuple[str, str, str], value: float | None, pid: int | None,
             per: float) -> float | None:
        if value is None:
            return None
        now = self.clock()
        previous = self._last.get(key)
        self._last[key] = (now, value, pid)
        if previous is None or previous[2] != pid or now <= previous[0] or value < previous[1]:
            return None         # first look, or a new process: its counters started over
        return (value - previous[1]) / (now - previous[0]) * per


def build_rows(states: Sequence[Any], metrics: Sequence[Any], rates: Rates) -> list[Row]:
    figures = {(m.tenant, m.service): dict(m.figures) for m in metrics}
    rows = []
    for s in states:
        if s.state_enum == pb.STATE_INVALID:
            continue
        f = figures.get((s.tenant, s.service), {})
        pid = s.pid if s.HasField("pid") else None
        key = (s.tenant, s.service)
        rows.append(Row(
            tenant=s.tenant, service=s.service, state=s.state, pid=pid,
            cpu=rates.rate((*key, "cpu"), f.get("cpu_seconds"), pid, 100.0),
            rss=f.get("rss_bytes"), restarts=s.restarts,
            msgs_min=rates.rate((*key, "sent"), f.get("messages_sent"), pid, 60.0),
            outbox=f.get("outbox_depth"), uptime=s.uptime_s if s.HasField("uptime_s") else None))
    return rows


def sort_rows(rows: list[Row], key: str, reverse: bool) -> list[Row]:
    extract = SORTS[key][1]
    present = [r for r in rows if extract(r) is not None]
    missing = [r for r in rows if extract(r) is None]
    # Figures read best largest first; names and states alphabetically.
    descending = key not in ("n", "s")
    ordered = sorted(present, key=extract, reverse=descending != reverse)
    return ordered + sorted(missing, key=SORTS["n"][1])


def cells(row: Row) -> list[str]:
    def num(value: float | None, fmt: str = "{:.0f}") -> str:
        return DASH if value is None else fmt.format(value)

    return [row.tenant, row.service, row.state, num(row.pid), num(row.cpu, "{:.1f}"),
            DASH if row.rss is None else size(row.rss), str(row.restarts), num(row.msgs_min, "{:.1f}"),
            num(row.outbox), duration(row.uptime)]


def header(rows: Sequence[Row], sort: str, reverse: bool, interval: float, error: str) -> str:
    tenants = len({r.tenant for r in rows})
    running = sum(r.state == "running" for r in rows)
    order = SORTS[sort][0] + (" (reversed)" if reverse else "")
    text = (f"oraclewad top  {time.strftime('%H:%M:%S')}  {tenants} tenants, {len(rows)} services, "
            f"{running} running  refresh {interval:g}s  sort: {order}")
    return text + (f"  [{error}]" if error else "")


def _draw(screen: Any, rows: list[Row], title: str) -> None:
    screen.erase()
    height, width = screen.getmaxyx()

    def put(y: int, text: str, attr: int = 0) -> None:
        if y < height:
            screen.addnstr(y, 0, text, max(width - 1, 0), attr)

    put(0, title, curses.A_BOLD)
    put(1, KEYS)
    put(3, " ".join(name.ljust(w) for name, w in COLUMNS), curses.A_REVERSE)
    for i, row in enumerate(rows):
        attr = 0 if row.state == "running" else curses.A_BOLD
        put(4 + i, " ".join(c[:w].ljust(w) for c, (_, w) in zip(cells(row), COLUMNS, strict=True)), attr)
    screen.refresh()


class Fetcher:
    """Asks the daemon in a thread of its own, so keys answer at once however slow the daemon is."""

    def __init__(self, fetch: Fetch, interval: float) -> None:
        self.fetch = fetch
        self.interval = interval
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.result: tuple[Sequence[Any], Sequence[Any]] | None = None
        self.error = ""
        self.fresh = threading.Event()
        self.thread = threading.Thread(target=self._run, name="top-fetch", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                result, error = self.fetch(), ""
            except Exception as e:  # the daemon away for a moment: say so, keep the last rows
                result, error = None, (str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
            with self.lock:
                if result is not None:
                    self.result = result
                self.error = error
            self.fresh.set()
            self.stop.wait(self.interval)

    def take(self) -> tuple[tuple[Sequence[Any], Sequence[Any]] | None, str] | None:
        """The latest answer once per fetch, else None."""
        if not self.fresh.is_set():
            return None
        self.fresh.clear()
        with self.lock:
            return self.result, self.error


def _loop(screen: Any, fetcher: Fetcher, interval: float, sort: str) -> int:
    curses.curs_set(0)
    screen.timeout(100)             # getch() polls every 100 ms: keys answer at once
    rates = Rates()
    reverse = False
    rows: list[Row] = []
    error = ""
    try:
        while True:
            taken = fetcher.take()
            if taken is not None:
                result, error = taken
                if result is not None and not error:
                    rows = build_rows(*result, rates)
                _draw(screen, sort_rows(rows, sort, reverse), header(rows, sort, reverse, interval, error))
            key = screen.getch()
            if key in (ord("q"), ord("Q"), 27):         # q or Esc
                return 0
            char = chr(key) if 0 <= key < 256 else ""
            if char in SORTS:
                reverse = not reverse if char == sort else False
                sort = char
                _draw(screen, sort_rows(rows, sort, reverse), header(rows, sort, reverse, interval, error))
            elif key == curses.KEY_RESIZE:
                _draw(screen, sort_rows(rows, sort, reverse), header(rows, sort, reverse, interval, error))
    finally:
        fetcher.stop.set()


def run_top(fetch: Fetch, interval: float = 2.0, sort: str = "n") -> int:
    """Until q or Ctrl-C; the terminal is restored either way."""
    # ncurses prefers $COLUMNS/$LINES over the terminal's real size, and shells or test
    # runners export stale ones: a live view follows the terminal (and its resizes).
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
    fetcher = Fetcher(fetch, interval)
    fetcher.thread.start()
    try:
        return curses.wrapper(_loop, fetcher, interval, sort)
    except KeyboardInterrupt:
        return 0
    finally:
        # The terminal is back; let an answer in flight land before the caller closes the
        # channel under it (bounded: the calls carry a deadline).
        fetcher.stop.set()
        fetcher.thread.join(timeout=6)
