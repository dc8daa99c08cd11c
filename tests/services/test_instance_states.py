"""A service's view of its instances: what events, polls and sends teach it (sandbox over HTTP)."""

from __future__ import annotations

import sys

import httpx
from prometheus_client import CollectorRegistry

from oraclewad.services.evolution import EvolutionClient, EvolutionError, FailureKind
from oraclewad.services.instances import InstanceStates
from tests.harness import free_port_base, wait_for
from tests.support.sandbox import Sandbox


async def test_poll_reads_each_state_and_health_fails_when_none_can_send(sandbox: Sandbox) -> None:
    await sandbox.create_instance("a", "open")
    await sandbox.create_instance("b", "connecting")
    async with EvolutionClient(sandbox.url, sandbox.api_key) as evo:
        states = InstanceStates(["a", "b", "ghost"], evo)
        assert not states.health()["ok"]  # nothing known before the first poll
        await states.refresh_all()
        assert states.sendable() == ["a"]
        assert [states.states[n].state for n in ("a", "b", "ghost")] == ["open", "connecting", "missing"]
        assert states.health()["ok"] and states.health()["detail"] == "1 of 3 can send"
        await sandbox.set_state("a", "close", 401)
        await states.refresh_all()
        check = states.health()
        assert not check["ok"] and check["detail"].startswith("no instance can send: a close")
        assert check["instances"]["ghost"]["detail"].endswith("oraclectl instances connect")
    async with EvolutionClient(sandbox.url, "wrong-key") as evo:
        states = InstanceStates(["b"], evo)
        await states.refresh_all()
        assert states.states["b"].state == "unauthorized"


async def test_a_ban_event_outlives_polls_until_the_instance_is_open_again(sandbox: Sandbox) -> None:
    await sandbox.create_instance("a", "open")
    async with EvolutionClient(sandbox.url, sandbox.api_key) as evo:
        states = InstanceStates(["a"], evo)
        await states.refresh_all()
        states.apply_connection_update({"instance": "a", "state": "close", "statusReason": 403})
        assert not states.can_send("a") and "banned" in states.states["a"].detail
        await sandbox.set_state("a", "close", 403)
        await states.refresh_all()  # connectionState says only "close": the reason stays known
        assert "banned" in states.states["a"].detail and not states.states["a"].in_rotation
        await sandbox.set_state("a", "open")
        await states.refresh_all()
        assert states.can_send("a")


def test_connection_events_pause_and_resume() -> None:
    states = InstanceStates(["a"], None)
    states.apply_connection_update({"instance": "a", "state": "open"})
    assert states.can_send("a")
    states.apply_connection_update({"instance": "a", "state": "connecting", "statusReason": 200})
    assert not states.can_send("a") and states.states["a"].in_rotation  # paused, not out of rotation
    states.apply_connection_update({"instance": "a", "state": "open"})
    states.apply_connection_update({"instance": "a", "state": "refused", "statusReason": 428})
    assert not states.can_send("a")
    states.apply_connection_update({"instance": "other", "state": "open"})  # not ours: ignored
    assert "other" not in states
    for reason in (401, 402, 403, 406):
        states.apply_connection_update({"instance": "a", "state": "open"})
        states.apply_connection_update({"instance": "a", "state": "close", "statusReason": reason})
        assert not states.states["a"].in_rotation and states.states["a"].status_reason == reason


def test_can_send_is_a_metric_per_instance() -> None:
    registry = CollectorRegistry()
    states = InstanceStates(["a", "b"], None, registry=registry)

    def value(name: str) -> float | None:
        return registry.get_sample_value("oraclewa_instance_can_send", {"instance": name})

    assert (value("a"), value("b")) == (0, 0)
    states.apply_connection_update({"instance": "a", "state": "open"})
    assert (value("a"), value("b")) == (1, 0)
    states.apply_connection_update({"instance": "a", "state": "close", "statusReason": 406})
    assert value("a") == 0


def test_send_outcomes_update_the_state() -> None:
    states = InstanceStates(["a"], None)
    states.apply_connection_update({"instance": "a", "state": "open"})
    states.note_send("a", EvolutionError(FailureKind.CONNECTION_CLOSED, 500, ["Connection Closed"]))
    assert not states.can_send("a")
    states.note_send("a", None)  # a send went through: it is open after all
    assert states.can_send("a")
    states.note_send("a", EvolutionError(FailureKind.NOT_ON_WHATSAPP, 400, []))  # the number's fault
    assert states.can_send("a")
    states.note_send("a", EvolutionError(FailureKind.UNAUTHORIZED, 401, ["Unauthorized"]))
    assert states.states["a"].state == "unauthorized"


def test_the_sandbox_runs_as_a_host_program_on_the_daemons_socket(make_daemon) -> None:
    port = free_port_base() + 190
    daemon = make_daemon(extra=f'[programs.sandbox]\ncommand = ["{sys.executable}", "-m", '
                               f'"oraclewad.services.sandbox", "--api-key", "k", "--instance", "i1"]\n'
                               f"port = {port}\n")
    daemon.start()

    def state() -> str | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/instance/connectionState/i1", headers={"apikey": "k"})
        except httpx.HTTPError:
            return None
        return r.json()["instance"]["state"]

    assert wait_for(state, what="the sandbox on the daemon's port") == "open"
    row = next(r for r in daemon.ctl_json("status", "programs") if r["service"] == "sandbox")
    assert row["state"] == "running" and row["port"] == port
