"""Two running campaigns on the same instances take turns (round robin), so a small urgent
campaign started behind a big one is not starved; its ETA says so. On trio's MockClock
(tests/broadcast/simulation.py)."""

from __future__ import annotations

from tests.broadcast.simulation import SIM_ANTIBAN, Simulation, campaign, start_simulation

# No standby, so the schedule starts at once; caps high enough for both campaigns in one day.
ANTIBAN = {**SIM_ANTIBAN, "standby_hours": 0,
           "warmup": {s: {"min": 500, "max": 500} for s in ("day1", "day2", "day3", "mature")}}


async def status(sim: Simulation, cid: int) -> dict:
    return (await sim.http.get(f"/campaigns/{cid}")).json()


async def test_a_small_campaign_started_behind_a_big_one_shares_the_sends(nursery, mock_clock, broadcast_db,
                                                                          sandbox):
    sim = await start_simulation(nursery, broadcast_db, sandbox, ["bc-1"], antiban=ANTIBAN)
    try:
        big, small = await campaign(sim, 60), await campaign(sim, 6)
        assert (await sim.http.post(f"/campaigns/{big}/start", json={})).json()["status"] == "running"
        await sim.run_until(lambda: _sent_at_least(sim, big, 3))
        started = (await sim.http.post(f"/campaigns/{small}/start", json={})).json()
        t0, eta = sim.clock(), started["eta"]

        # (`completed` is set by the sweep, which the simulation runs rarely: count the sends.)
        await sim.run_until(lambda: _sent_at_least(sim, small, 6))
        finished = sim.clock()
        big_sent = (await status(sim, big))["sent"]
        # Round robin: the big one sent about as many as the small one meanwhile, not all of its 60.
        assert big_sent <= 3 + 6 + 1, big_sent
        with sim.pool.connection() as conn:
            last = conn.execute("SELECT max(sent_at) FROM recipients WHERE campaign_id = %s",
                                (small,)).fetchone()[0].timestamp()
        assert abs(eta - last) <= 0.10 * (last - t0), (eta, last, t0, finished)
    finally:
        await sim.aclose()


async def _sent_at_least(sim: Simulation, cid: int, n: int) -> bool:
    return (await status(sim, cid))["sent"] >= n
