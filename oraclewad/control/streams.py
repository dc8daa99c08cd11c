"""Server streams that can never slow the daemon: a cap, bounded queues, and a stall watchdog.

Each open stream holds a grpc pool thread, so their number is capped. A stream's grpc thread
blocks inside `yield` once HTTP/2 flow control is exhausted (a consumer that stopped reading);
the watchdog then ends the call with RESOURCE_EXHAUSTED. Events reach a stream's thread through
a bounded queue that the trio side fills without ever waiting; on overflow the stream is dropped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import trio

from oraclewad.operations import EventView, Operations

log = logging.getLogger("oraclewad.control")

TOO_SLOW = "consumer too slow: the stream was dropped because it stopped reading"


class Stream:
    """One open server stream: its call, and whether its thread is stuck handing over a message."""

    def __init__(self, context: grpc.ServicerContext, method: str) -> None:
        self.context = context
        self.method = method
        self.sending_since: float | None = None
        self.dropped: tuple[grpc.StatusCode, str] | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Wrap each `yield`: grpc blocks there while the client's flow-control window is full."""
        self.sending_since = time.monotonic()
        try:
            yield
        finally:
            self.sending_since = None

    def drop(self, code: grpc.StatusCode, message: str) -> None:
        """End the call with a status from any thread, even while its handler is blocked in a send.

        The public `context.cancel()` can only say CANCELLED; the call object underneath can end
        the stream with our code and message, which the client reads after its buffered messages.
        """
        with self._lock:
            if self.dropped is not None:
                return
            self.dropped = (code, message)
        try:
            from grpc._cython import cygrpc

            status = getattr(cygrpc.StatusCode, code.name.lower())
            self.context._rpc_event.call.cancel(status, message)  # type: ignore[attr-defined]
        except Exception:  # grpc internals moved: still free the thread, as CANCELLED
            log.debug("control: cancel with status failed; cancelling plainly", exc_info=True)
            self.context.cancel()


class Streams:
    """The set of open streams: capped, and watched for consumers that stopped reading."""

    def __init__(self, limit: int, stall_timeout: float) -> None:
        self.limit = limit
        self.stall_timeout = stall_timeout
        self._lock = threading.Lock()
        self._open: set[Stream] = set()
        self._wake: Callable[[], None] | None = None   # set while the watchdog waits for a stream

    def __len__(self) -> int:
        return len(self._open)

    def open(self, context: grpc.ServicerContext, method: str) -> Stream:
        from oraclewad.control.bridge import RpcFailure

        stream = Stream(context, method)
        with self._lock:
            if len(self._open) >= self.limit:
                raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"too many open streams ({self.limit}): close an idle "
                                 "`oraclectl logs -f` or `oraclectl events -f` and retry")
            self._open.add(stream)
            wake, self._wake = self._wake, None
        if wake is not None:
            wake()
        # Runs when the call ends however it ends (client gone, dropped, server stopped).
        context.add_callback(lambda: self.close(stream))
        return stream

    def close(self, stream: Stream) -> None:
        with self._lock:
            self._open.discard(stream)

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            stuck = [s for s in self._open
                     if s.sending_since is not None and now - s.sending_since > self.stall_timeout]
        for stream in stuck:
            log.warning("control: dropping %s stream from %s: %s", stream.method,
                        stream.context.peer(), TOO_SLOW)
            stream.drop(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_SLOW)

    def drop_all(self, code: grpc.StatusCode, message: str) -> None:
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            stream.drop(code, message)

    async def watchdog(self, interval: float = 0.5) -> None:
        """Checks every `interval` s while a stream is open; with none open it sleeps until one opens
        (an idle daemon has no timer here)."""
        token = trio.lowlevel.current_trio_token()
        while True:
            opened = trio.Event()
            with self._lock:
                idle = not self._open
                if idle:
                    self._wake = functools.partial(token.run_sync_soon, opened.set)
            if idle:
                await opened.wait()
            await trio.sleep(interval)
            self.check()


class Pipe:
    """Bounded hand-over from the trio thread (never waits) to one stream's grpc thread."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self.overflowed = False
        self.closed = False

    def put(self, item: Any) -> bool:
        """False when the consumer is a whole queue behind (the pipe is then closed)."""
        with self._cond:
            if self.closed:
                return False
            if len(self._items) >= self.maxsize:
                self.overflowed = self.closed = True
                self._cond.notify_all()
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def get(self, timeout: float) -> list[Any] | None:
        """Everything queued (possibly []) after waiting up to `timeout`; None once closed and empty."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            if self._items and not self.overflowed:
                items = list(self._items)
                self._items.clear()
                return items
            return None if self.closed else []


@dataclass(eq=False)
class _Subscriber:
    tenant: str
    pipe: Pipe
    on_overflow: Callable[[], None]


class EventFeed:
    """One subscription to the daemon's events, fanned out to streams, with recent events kept."""

    def __init__(self, ops: Operations, keep: int = 500, queue: int = 256) -> None:
        self.ops = ops
        self.queue = queue
        self._recent: deque[EventView] = deque(maxlen=keep)
        self._subs: set[_Subscriber] = set()
        self._lock = threading.Lock()   # subscribe/unsubscribe come from grpc threads

    async def run(self) -> None:
        while True:
            try:
                events: AsyncIterator[EventView] = self.ops.watch_events()
                async for event in events:
                    self.publish(event)
                log.info("control: the daemon ended the event subscription; subscribing again")
            except Exception:
                log.exception("control: event subscription failed; subscribing again in 1s")
                await trio.sleep(0.9)
            await trio.sleep(0.1)

    def publish(self, event: EventView) -> None:
        with self._lock:
            self._recent.append(event)
            subs = list(self._subs)
        for sub in subs:
            if sub.tenant and sub.tenant != event.tenant:
                continue
            if not sub.pipe.put(event):
                self.unsubscribe(sub)
                if sub.pipe.overflowed:
                    sub.on_overflow()

    def mentions(self, tenant: str) -> bool:
        """Whether any kept event is about this tenant."""
        with self._lock:
            return any(e.tenant == tenant for e in self._recent)

    def subscribe(self, tenant: str, recent: int, follow: bool,
                  on_overflow: Callable[[], None]) -> tuple[list[EventView], _Subscriber | None]:
        """Recent events (oldest first) and, when following, a subscription that starts right after them."""
        with self._lock:
            backlog = [e for e in self._recent if not tenant or e.tenant == tenant]
            backlog = backlog[-recent:] if recent > 0 else []
            sub = None
            if follow:
                sub = _Subscriber(tenant, Pipe(self.queue), on_overflow)
                self._subs.add(sub)
        return backlog, sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)
        sub.pipe.close()


LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50, "fatal": 50}
RAW_LINE_LEVEL = 40     # raw stderr lines (tracebacks) are what error.log keeps


class LineFilter:
    """Keeps the log records at or above a level and at or after a time. A line that is not a
    JSON record (raw stderr) counts as an error and goes with the time of the record before it."""

    def __init__(self, level: str = "", since: float | None = None) -> None:
        self.min_level = LOG_LEVELS[level] if level else 0
        self.since = since
        self._last_recent: bool | None = None     # the time verdict of the previous record

    @property
    def active(self) -> bool:
        return bool(self.min_level) or self.since is not None

    def keep(self, line: str) -> bool:
        record: Any = None
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
        if not isinstance(record, dict):
            level = RAW_LINE_LEVEL
            recent = self._last_recent if self._last_recent is not None else self.since is None
        else:
            level = LOG_LEVELS.get(str(record.get("level", "info")).lower(), 20)
            recent = self._recent(record.get("ts"))
            self._last_recent = recent
        return level >= self.min_level and recent

    def _recent(self, ts: object) -> bool:
        if self.since is None:
            return True
        try:
            when = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        except ValueError:
            return self._last_recent if self._last_recent is not None else False
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp() >= self.since


MAX_TAIL_BYTES = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024


class LogTail:
    """A log file read from a grpc thread: its last lines, then what is appended, across rotation."""

    def __init__(self, path: str, service: str, tenant: str = "") -> None:
        self.path = path
        self.service = service
        self.tenant = tenant
        self._file: Any = None
        self._inode: int | None = None
        self._partial = b""
        self._drained = True
        # Files rotation created since the one being read, opened the moment they appeared
        # (`new_file`, from the daemon's thread); read in order, so a burst loses nothing.
        self._next: deque[Any] = deque()
        self.watched = False                # True once new_file is wired to the writer

    def new_file(self) -> None:
        """The writer rotated and created a new file: hold it open for later (never blocks)."""
        with contextlib.suppress(OSError):
            self._next.append(open(self.path, "rb"))  # noqa: SIM115 (read by poll later)

    def open_now(self) -> None:
        """Open the current file (call together with subscribing to `new_file`, on one thread)."""
        if self._file is None:
            self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        while self._next:
            self._next.popleft().close()

    def _open(self) -> bool:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open across polls)
        except FileNotFoundError:
            return False
        self._inode = os.fstat(self._file.fileno()).st_ino
        return True

    def last_lines(self, n: int, *, keep_partial: bool) -> list[str]:
        """The last `n` lines; leaves the file positioned at its end for `poll`."""
        if self._file is None and not self._open():
            return []
        f = self._file
        end = f.seek(0, os.SEEK_END)
        start, data = end, b""
        # Read backwards until enough newlines (or the cap) are in hand.
        while start > 0 and data.count(b"\n") <= n and end - start < MAX_TAIL_BYTES:
            step = min(64 * 1024, start)
            start -= step
            f.seek(start)
            data = f.read(step) + data
        f.seek(end)
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]               # the first piece is the tail of an earlier line
        last = lines.pop()                  # b"" when the file ends with a newline
        if keep_partial:
            self._partial = last            # the writer is mid-line: finish it when it lands
        elif last:
            lines.append(last)
        return [_decode(line) for line in lines[-n:]] if n > 0 else []

    def poll(self) -> list[str]:
        """Complete lines appended since the last call (at most about READ_CHUNK of them); follows
        rotated files in order (told by `new_file`, or else noticed by inode) and truncation."""
        if self._file is None:
            if self._next:
                self._take_next()
            elif not self._open():
                return []
        out = self._read_new()
        while self._drained and self._next:
            # The writer moved on to a newer file: this one is complete and read to its end.
            self._finish_file(out)
            self._take_next()
            out += self._read_new()
        if self.watched:
            return out
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None                    # rotated away, the new file not created yet
        if inode is not None and inode != self._inode and self._drained:
            out += self._read_new()         # what the writer added before rotating
            self._finish_file(out)
            if self._open():
                out += self._read_new()
        return out

    def _finish_file(self, out: list[str]) -> None:
        if self._partial:
            out.append(_decode(self._partial))
            self._partial = b""
        self._file.close()
        self._file = None

    def _take_next(self) -> None:
        self._file = self._next.popleft()
        self._inode = os.fstat(self._file.fileno()).st_ino

    def _read_new(self) -> list[str]:
        f = self._file
        if os.fstat(f.fileno()).st_size < f.tell():
            f.seek(0)                       # truncated in place (copytruncate rotation)
            self._partial = b""
        data = f.read(READ_CHUNK)
        self._drained = len(data) < READ_CHUNK
        if not data:
            return []
        pieces = (self._partial + data).split(b"\n")
        self._partial = pieces.pop()
        return [_decode(p) for p in pieces]


def _decode(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")
