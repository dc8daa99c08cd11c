"""`campaign test` goes through the anti-ban engine like any send from the campaign's numbers: it
counts against today's cap, keeps the gap (in silence: it plays no typing, so the command answers
at once) and, when no instance may send it, answers 409 with the reason and when to try again.
On trio's MockClock (tests/broadcast/simulation.py)."""

from __future__ import annotations

import trio

from tests.broadcast.simulation import SIM_ANTIBAN, campaign, start_simulation

# A 60 s gap (a test plays no typing, so the sandbox does not wait it in real time), no standby,
# two messages a day.
ANTIBAN = {**SIM_ANTIBAN, "delay_min": 60, "delay_max": 60, "standby_hours": 0, "text_limit": 0,
           "warmup": {s: {"min": 2, "max": 2} for s in ("day1", "day2", "day3", "mature")}}


async def test_test_sends_keep_the_gap_and_count_against_the_cap(nursery, mock_clock, broadcast_db, sandbox):
    sim = await start_simulation(nursery, broadcast_db, sandbox, ["bc-1"], antiban=ANTIBAN)
    try:
        cid = await campaign(sim, 3)

        async def test() -> tuple[int, dict]:
            r = await sim.http.post(f"/campaigns/{cid}/test", json={"phone": "5511987650000"})
            return r.status_code, r.json()

        status, first = await test()
        assert status == 200 and first["instance"] == "bc-1", first
        status, again = await test()          # at once: the instance has not been silent its gap
        assert status == 409, again
        assert "gap until" in again["detail"] and "try again after" in again["detail"], again
        trio.lowlevel.current_clock().jump(61)
        status, second = await test()
        assert status == 200, second
        trio.lowlevel.current_clock().jump(61)
        status, capped = await test()         # two a day: the third waits for tomorrow
        assert status == 409 and "today's cap 2 reached" in capped["detail"], capped
        assert len(await sandbox.messages()) == 2
        with sim.pool.connection() as conn:
            sent = conn.execute("SELECT sum(sent) FROM antiban_days WHERE instance = 'bc-1'").fetchone()[0]
        assert sent == 2
    finally:
        await sim.aclose()
