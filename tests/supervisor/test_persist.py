"""An operator's stop is desired state: it survives a daemon restart until start(name)."""

from __future__ import annotations

import json
import random

import trio

from oraclewad.settings import LogSettings
from oraclewad.supervisor import Supervisor


async def test_operator_stop_survives_a_new_supervisor_on_the_same_state_dir(root, make_spec):
    specs = {n: make_spec(n) for n in ("a/recovery", "a/broadcast")}
    stopped_json = root / "state" / "stopped.json"

    def new_supervisor() -> Supervisor:
        return Supervisor(root / "run", root / "state", LogSettings(), rng=random.Random(3))

    with trio.fail_after(20):
        first = new_supervisor()
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            first.apply(specs)
            await first.wait_state("a/broadcast", "running", 10)
            await first.stop("a/broadcast")
            assert json.loads(stopped_json.read_text()) == {"stopped": ["a/broadcast"]}
            assert stopped_json.stat().st_mode & 0o777 == 0o640
            nursery.cancel_scope.cancel()

        second = new_supervisor()
        assert second.operator_stopped == {"a/broadcast"}
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run)
            events = second.subscribe()
            second.apply(specs)
            await second.wait_state("a/recovery", "running", 10)
            held = second.status("a/broadcast")
            assert held.state == "stopped" and held.pid is None
            # It never even tried: no event about it.
            while True:
                try:
                    assert events.receive_nowait().name != "a/broadcast"
                except trio.WouldBlock:
                    break
            started = await second.start("a/broadcast")
            assert started.state == "running"
            assert json.loads(stopped_json.read_text()) == {"stopped": []}
            nursery.cancel_scope.cancel()

        third = new_supervisor()
        assert third.operator_stopped == frozenset()


async def test_unreadable_state_file_holds_nothing_stopped(root):
    (root / "state").mkdir()
    (root / "state" / "stopped.json").write_text("{not json")
    sup = Supervisor(root / "run", root / "state", LogSettings())
    assert sup.operator_stopped == frozenset()
