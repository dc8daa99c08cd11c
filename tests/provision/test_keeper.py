"""The keeper of the embedded servers notices a dead server at once, not at its next probe; a
server whose folder was deleted under it still stops."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from oraclewad.provision.embedded import EmbeddedRedis, _alive
from oraclewad.provision.keeper import PROBE_INTERVAL, PROBE_JITTER, Guard, ServerKeeper


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    with tempfile.TemporaryDirectory(prefix="owa-keeper-") as name:
        base = Path(name)
        server = EmbeddedRedis(base / "redis", base / "secrets", base / "sock")
        server.start()
        yield server        # pytest resumes here at teardown, passed or failed
        server.stop()


async def test_a_killed_server_is_restarted_without_waiting_for_the_probe(
        redis_server: EmbeddedRedis, mock_clock: trio.testing.MockClock) -> None:
    # The clock jumps to the keeper's next probe once everything has waited 1 s of real time;
    # a keeper that only learns of the death by probing would see it there, seconds later.
    mock_clock.autojump_threshold = 1.0
    changes: list[tuple[float, str, str]] = []
    restarted = trio.Event()

    def on_change(name: str, state: str, message: str) -> None:
        changes.append((trio.current_time(), state, message))
        if state == "running":
            restarted.set()

    guard = Guard()
    keeper = ServerKeeper([redis_server], guard, on_change)
    victim = redis_server.pid()
    assert victim is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.run)
            await trio.sleep(0.01)      # the keeper is waiting for its first probe
            killed_at = trio.current_time()
            os.kill(victim, signal.SIGKILL)
            await restarted.wait()
            nursery.cancel_scope.cancel()
        noticed_at, state, message = changes[0]
        assert (state, message) == ("restarting", "its process is gone")
        assert noticed_at - killed_at < PROBE_INTERVAL * (1 - PROBE_JITTER) / 4, changes
        assert redis_server.pid() not in (None, victim)
        redis_server.probe()
    finally:
        guard.close()      # stops the restarted server too


def test_a_redis_whose_folder_was_deleted_still_stops() -> None:
    # Redis refuses SIGTERM and SHUTDOWN SAVE once it cannot save, and its pidfile went with the
    # folder: the daemon's stop must still end it (earlier, such servers outlived their daemon).
    with tempfile.TemporaryDirectory(prefix="owa-keeper-") as name:
        base = Path(name)
        server = EmbeddedRedis(base / "redis", base / "secrets", base / "sock")
        server.start()
        pid = server.pid()
        assert pid is not None
        try:
            shutil.rmtree(base / "redis")
            started = time.monotonic()
            server.stop()
            assert not _alive(pid), "embedded Redis still running after stop()"
            assert time.monotonic() - started < 10  # NOSAVE at once, not the SIGKILL fallback
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
