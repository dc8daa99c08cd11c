"""The keeper of the embedded servers notices a dead server at once, not at its next probe."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from oraclewad.provision.embedded import EmbeddedRedis
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
