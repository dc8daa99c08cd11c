"""The ETA shown when a campaign starts, against when it actually finished, on trio's MockClock
(tests/broadcast/simulation.py): standby, warm-up caps by day, batch pauses and business hours
make it a multi-day schedule."""

from __future__ import annotations

from tests.broadcast.simulation import run_campaign, shown, start_simulation


async def test_the_eta_at_start_is_within_10_percent_of_the_actual_finish(nursery, mock_clock, broadcast_db,
                                                                          sandbox):
    sim = await start_simulation(nursery, broadcast_db, sandbox, ["bc-1", "bc-2", "bc-3"])
    try:
        result = await run_campaign(sim, 150)
    finally:
        await sim.aclose()
    assert result["sent"] == 150
    days = (result["actual"] - result["start"]) / 86400
    assert days > 1, shown(result)          # a day of standby, then day-1 and day-2 caps
    assert result["error"] <= 0.10, shown(result)
    assert len({m["number"] for m in await sandbox.messages()}) == 150
