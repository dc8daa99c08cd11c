"""Two processes of one service during a swap: the new one starts on the same listening socket,
takes over only once it is ready and healthy, and a failing one is killed with the old untouched."""

from __future__ import annotations

import trio

from oraclewad.rollout import Gate, Plan, Swapper
from tests.supervisor.conftest import proc_state, wait_until
from tests.supervisor.test_listen import ask_pid, free_port


async def always_ok(path: str) -> tuple[str, str]:
    return "ok", ""


class Load:
    """Clients asking the service's port for its pid, one after another, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[int] = []
        self.failures: list[str] = []
        self.stop = trio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                with trio.fail_after(5):
                    self.answers.append(await ask_pid(self.port))
            except (OSError, AssertionError, trio.TooSlowError) as e:
                self.failures.append(repr(e))
            await trio.sleep(0.005)


async def swap(sup, name, spec, gate):
    reports = []
    plan = Plan(name, "web", spec, "a", "b")
    swapper = Swapper(sup, always_ok, "t", reports.append)
    outcomes, cands = await swapper.stage_and_gate([plan], gate)
    ok = all(o.ok for o in outcomes)
    await swapper.finish(outcomes, cands, promote=ok)
    return outcomes[0], reports


async def test_swap_hands_the_socket_over_without_a_failed_request(sup, make_spec, nursery):
    port = free_port()
    old_spec = make_spec("t/web", listen=("127.0.0.1", port))
    sup.apply({"t/web": old_spec})
    old = await sup.wait_state("t/web", "running", 10)
    load = Load(port)
    nursery.start_soon(load.run)
    await wait_until(lambda: len(load.answers) > 5)

    new_spec = make_spec("t/web", "--exit-code", "9", listen=("127.0.0.1", port))
    outcome, reports = await swap(sup, "t/web", new_spec, Gate(healthy_deadline=10, min_healthy_time=0.5,
                                                                health_interval=0.1))
    assert outcome.ok, outcome.reason
    assert [r.phase for r in reports][:2] == ["starting", "ready"] and reports[-1].phase == "healthy"
    now = sup.status("t/web")
    assert now.state == "running" and now.pid not in (None, old.pid)
    assert proc_state(old.pid) is None          # the old process is gone once promote returns
    assert sup.spec("t/web") == new_spec
    seen = len(load.answers)
    await wait_until(lambda: len(load.answers) > seen + 5)
    load.stop.set()
    assert load.failures == []
    assert old.pid in load.answers and load.answers[-1] == now.pid

    # The new process is supervised like any other: it restarts when it dies.
    await sup.restart("t/web")
    assert sup.status("t/web").state == "running"


async def test_failing_new_process_is_killed_and_the_old_one_keeps_serving(sup, make_spec, nursery):
    port = free_port()
    sup.apply({"t/web": make_spec("t/web", listen=("127.0.0.1", port))})
    old = await sup.wait_state("t/web", "running", 10)
    load = Load(port)
    nursery.start_soon(load.run)
    gate = Gate(healthy_deadline=1.0, min_healthy_time=1.0, health_interval=0.1)

    cases = {
        "exited before it was ready": ("--exit-at-start",),
        "not ready within healthy_deadline 1 s": ("--no-ready",),
        "exited 0.": ("--crash-after", "0.3"),
    }
    for why, flags in cases.items():
        outcome, _ = await swap(sup, "t/web", make_spec("t/web", *flags, listen=("127.0.0.1", port)), gate)
        assert not outcome.ok and why in outcome.reason, (why, outcome.reason)
        status = sup.status("t/web")
        assert status.pid == old.pid and status.state == "running" and status.restarts == 0
    await trio.sleep(0.2)
    load.stop.set()
    # The new processes took some requests from the shared socket; none was dropped.
    assert load.failures == [] and load.answers[-1] == old.pid


async def test_a_service_stopped_during_the_swap_aborts_it(sup, make_spec):
    port = free_port()
    sup.apply({"t/web": make_spec("t/web", listen=("127.0.0.1", port))})
    await sup.wait_state("t/web", "running", 10)
    cand = await sup.stage("t/web", make_spec("t/web", "--exit-code", "5", listen=("127.0.0.1", port)))
    await cand.ready.wait()
    await sup.stop("t/web")
    try:
        await sup.promote("t/web", cand)
    except Exception as e:
        assert "stopped" in str(e) or "not running" in str(e)
    else:
        raise AssertionError("promote of a stopped service succeeded")
    await sup.discard("t/web", cand)
    assert cand.child.exited.is_set()
