"""Children's output into per-service log files, which the daemon owns.

stdout carries one JSON object per line: every line goes to combined.log, a line with a valid
`channel` also to <channel>.log, and level error/critical also to error.log. Other stdout lines
are wrapped as {ts, level: info, channel: stdout, msg}. stderr lines go raw (tracebacks intact)
to error.log and combined.log.

Files rotate by size. The rename happens at once, on the trio thread; the gzip of the rotated
file runs in a worker thread, one at a time, so the event loop never waits for it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import trio

from oraclewad.settings import LogSettings

log = logging.getLogger("oraclewad.supervisor")

MAX_LINE = 64 * 1024
CHANNEL_RE = re.compile(r"[a-z][a-z0-9_]{0,30}")
RESERVED_CHANNELS = frozenset({"combined", "error"})     # these names are files of their own
ERROR_LEVELS = frozenset({"error", "critical", "fatal"})
TRUNCATED = b" [truncated]"
FILE_MODE = 0o640
DIR_MODE = 0o750

Line = tuple[bytes, bool]       # (content without the newline, truncated)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LineSplitter:
    """Bytes in, lines out. A line longer than `limit` is cut at `limit` and the rest of it is
    dropped up to its newline, so a child printing without newlines cannot grow our memory."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Line]:
        lines: list[Line] = []
        pos = 0
        while (nl := data.find(b"\n", pos)) >= 0:
            segment = data[pos:nl]
            pos = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            if self._buf:
                segment = bytes(self._buf) + segment
                self._buf.clear()
            if len(segment) > self.limit:
                lines.append((segment[:self.limit], True))
            else:
                lines.append((segment, False))
        if not self._discarding:
            self._buf += data[pos:]
            if len(self._buf) > self.limit:
                lines.append((bytes(self._buf[:self.limit]), True))
                self._buf.clear()
                self._discarding = True
        return lines

    def flush(self) -> list[Line]:
        """At EOF: a last line without newline."""
        rest, self._buf = bytes(self._buf), bytearray()
        discarding, self._discarding = self._discarding, False
        return [(rest, False)] if rest and not discarding else []


class Compressor:
    """Gzips rotated files one after another in a worker thread, in submission order (so the
    shifting of numbered backups of one file never interleaves)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[Path, Path, int]](math.inf)
        self.pending = 0
        self._queued: set[Path] = set()
        self._idle = trio.Event()
        self._idle.set()

    def submit(self, path: Path, rotated: Path, backups: int) -> None:
        if rotated in self._queued:
            return
        if self.pending == 0:
            self._idle = trio.Event()
        self.pending += 1
        self._queued.add(rotated)
        self._send.send_nowait((path, rotated, backups))

    async def wait_idle(self) -> None:
        """Until every submitted file is compressed (tests, shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        async for path, rotated, backups in self._receive:
            try:
                await trio.to_thread.run_sync(compress_rotated, path, rotated, backups)
            except Exception as e:     # a bad file must not stop the compression of the others
                log.warning("could not compress %s: %s (kept as is)", rotated, e)
            finally:
                self._queued.discard(rotated)
                self.pending -= 1
                if self.pending == 0:
                    self._idle.set()


def compress_rotated(path: Path, rotated: Path, backups: int) -> None:
    """rotated -> path.1.gz, shifting path.N.gz up and dropping the oldest (runs in a thread)."""
    if backups <= 0:
        rotated.unlink(missing_ok=True)
        return
    tmp = path.with_name(f"{path.name}.1.gz.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        with open(rotated, "rb") as src, open(fd, "wb") as raw, \
                gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=6) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    path.with_name(f"{path.name}.{backups}.gz").unlink(missing_ok=True)
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}.gz")
        with contextlib.suppress(FileNotFoundError):
            older.rename(path.with_name(f"{path.name}.{i + 1}.gz"))
    tmp.rename(path.with_name(f"{path.name}.1.gz"))
    rotated.unlink(missing_ok=True)


class RotatingFile:
    """An O_APPEND file that is renamed away when the next write would pass max_bytes."""

    def __init__(self, path: Path, settings: LogSettings, compressor: Compressor,
                 watchers: LogWatchers | None = None) -> None:
        self.path = path
        self.settings = settings
        self.compressor = compressor
        self.watchers = watchers
        self.fd: int | None = None
        self.size = 0
        self._checked_leftovers = False
        self._rotated = False

    def _open(self) -> int:
        if self.fd is None:
            if not self._checked_leftovers:
                # Rotated files whose compression an earlier daemon did not finish.
                self._checked_leftovers = True
                for left in sorted(self.path.parent.glob(f"{self.path.name}.*.rotated")):
                    self.compressor.submit(self.path, left, self.settings.backups)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            os.fchmod(self.fd, FILE_MODE)
            self.size = os.fstat(self.fd).st_size
            if self._rotated:
                self._rotated = False
                if self.watchers is not None:
                    self.watchers.new_file(self.path)
        return self.fd

    def write_lines(self, lines: list[bytes]) -> None:
        """Append whole lines, rotating between two lines whenever the next would pass max_bytes
        (so a file only exceeds the limit when a single line does)."""
        self._open()
        batch: list[bytes] = []
        batch_size = 0
        for line in lines:
            if self.size + batch_size + len(line) > self.settings.max_bytes and self.size + batch_size:
                self._append(b"".join(batch))
                batch, batch_size = [], 0
                self._rotate()
            batch.append(line)
            batch_size += len(line)
        self._append(b"".join(batch))

    def _append(self, data: bytes) -> None:
        fd = self._open()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        self.size += len(data)

    def _rotate(self) -> None:
        if self.size == 0:
            return
        self.close()
        rotated = self.path.with_name(f"{self.path.name}.{time.time_ns()}.rotated")
        os.rename(self.path, rotated)
        self.size = 0
        self._rotated = True
        self.compressor.submit(self.path, rotated, self.settings.backups)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class LogWatchers:
    """Followers of log files (`oraclectl logs -f`), told the moment a rotation opens a new file.

    A follower holds the file it reads open; rotation renames that file away and the next write
    creates a new one. Several rotations can pass between two reads of a follower (a burst of
    output), so it is handed each new file as it is created, on the trio thread, and reads them
    in order: no line is skipped however fast the files turn over. A callback must not block.
    """

    def __init__(self) -> None:
        self._by_file: dict[Path, set[Callable[[], None]]] = {}

    def add(self, path: Path, on_new_file: Callable[[], None]) -> Callable[[], None]:
        self._by_file.setdefault(path, set()).add(on_new_file)

        def remove() -> None:
            callbacks = self._by_file.get(path)
            if callbacks is not None:
                callbacks.discard(on_new_file)
                if not callbacks:
                    del self._by_file[path]

        return remove

    def new_file(self, path: Path) -> None:
        for callback in list(self._by_file.get(path, ())):
            try:
                callback()
            except Exception:   # a broken follower must not cost the log its lines
                log.exception("log follower of %s failed; dropped", path)
                self._by_file.get(path, set()).discard(callback)


class LogSink:
    """The log files of one service directory. Shared by the pumps of successive processes of
    the service; files close when the last user releases the sink."""

    def __init__(self, log_dir: Path, settings: LogSettings, compressor: Compressor,
                 watchers: LogWatchers | None = None) -> None:
        self.log_dir = log_dir
        # Only its files use the settings, compressor and watchers.
        self._new_file = partial(RotatingFile, settings=settings, compressor=compressor, watchers=watchers)
        self.write_errors = 0
        self.bytes_written = 0          # into combined.log (every line lands there): a metric
        self._files: dict[str, RotatingFile] = {}
        self._users = 0
        self._dir_ready = False

    def acquire(self) -> LogSink:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self.close()

    def stdout_lines(self, lines: list[Line]) -> None:
        batches: dict[str, list[bytes]] = {"combined": []}
        for raw, truncated in lines:
            obj = None
            if not truncated and raw[:1] == b"{":
                with contextlib.suppress(ValueError):
                    obj = json.loads(raw)
            if isinstance(obj, dict):
                out = raw.rstrip(b"\r") + b"\n"
                batches["combined"].append(out)
                channel, level = obj.get("channel"), obj.get("level")
                if (isinstance(channel, str) and channel not in RESERVED_CHANNELS
                        and CHANNEL_RE.fullmatch(channel)):
                    batches.setdefault(channel, []).append(out)
                if isinstance(level, str) and level.lower() in ERROR_LEVELS:
                    batches.setdefault("error", []).append(out)
            else:
                record: dict[str, object] = {"ts": now_iso(), "level": "info", "channel": "stdout",
                                             "msg": raw.rstrip(b"\r").decode("utf-8", "replace")}
                if truncated:
                    record["truncated"] = True
                batches["combined"].append(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self._write(batches)

    def stderr_lines(self, lines: list[Line]) -> None:
        out = [raw + (TRUNCATED if truncated else b"") + b"\n" for raw, truncated in lines]
        self._write({"combined": out, "error": out})

    def _write(self, batches: dict[str, list[bytes]]) -> None:
        for name, chunks in batches.items():
            if not chunks:
                continue
            try:
                self._file(name).write_lines(chunks)
                if name == "combined":
                    self.bytes_written += sum(map(len, chunks))
            except OSError as e:
                # A full disk must not take the pump (and with it the child's pipe) down.
                self.write_errors += 1
                if self.write_errors in (1, 10, 100) or self.write_errors % 1000 == 0:
                    log.warning("cannot write %s/%s.log (%s); %d lines dropped so far",
                                self.log_dir, name, e.strerror, self.write_errors)

    def _file(self, name: str) -> RotatingFile:
        f = self._files.get(name)
        if f is None:
            if not self._dir_ready:
                self.log_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
                os.chmod(self.log_dir, DIR_MODE)
                self._dir_ready = True
            f = self._files[name] = self._new_file(self.log_dir / f"{name}.log")
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


async def pump(fd: int, handle: Callable[[list[Line]], None]) -> None:
    """Read a child's pipe until EOF, handing whole lines to `handle`. Takes ownership of fd."""
    splitter = LineSplitter()
    async with trio.lowlevel.FdStream(fd) as stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            lines = splitter.feed(data)
            if lines:
                handle(lines)
    tail = splitter.flush()
    if tail:
        handle(tail)
