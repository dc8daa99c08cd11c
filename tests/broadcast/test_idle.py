"""An idle broadcast sender on trio's MockClock (tests/broadcast/simulation.py, at the service's own
5 s cadence): with no campaign running it sleeps until its slow sweep, yet a campaign scheduled
meanwhile starts within a short sweep of its time."""

from __future__ import annotations

import trio
import trio.testing

from oraclewad.services.broadcast.sender import IDLE_SWEEP_EVERY, SWEEP_EVERY
from tests.broadcast.simulation import campaign, start_simulation


async def test_a_campaign_scheduled_while_the_sender_idles_starts_within_a_sweep_of_its_time(
        nursery, mock_clock, broadcast_db, sandbox):
    sim = await start_simulation(nursery, broadcast_db, sandbox, ["bc-1"])
    sender = sim.service.sender
    sender.idle_wait = sender.sweep_every = SWEEP_EVERY    # the service's cadence, not the simulation's
    try:
        cid = await campaign(sim, 3)
        at = sim.clock() + 100
        scheduled = (await sim.http.post(f"/campaigns/{cid}/start", json={"at": at})).json()
        assert scheduled["status"] == "scheduled", scheduled
        sleeps: list[float] = []
        status = "scheduled"
        while status == "scheduled":
            assert sim.clock() < at + 60, "the scheduled campaign never started"
            mock_clock.jump(SWEEP_EVERY)
            await trio.testing.wait_all_tasks_blocked()
            await sim.settle()
            sleeps.append(sender.sleeping_until - trio.current_time())
            status = (await sim.http.get(f"/campaigns/{cid}")).json()["status"]
        assert status == "running"
        assert sim.clock() <= at + SWEEP_EVERY + 1e-3
        # Before the campaign came in sight the sender slept until its slow sweeps.
        assert max(sleeps) > IDLE_SWEEP_EVERY - 2 * SWEEP_EVERY, sleeps
    finally:
        await sim.aclose()
