"""Operator calls that land while a reload is half-way never fail as INTERNAL (issue 8 item 7)."""

from __future__ import annotations

from pathlib import Path

import trio

from oraclewad.errors import OracleError
from oraclewad.fleet import Fleet
from oraclewad.provision import Provisioner, open_servers
from oraclewad.settings import load_settings
from oraclewad.supervisor import Supervisor
from tests.harness import write_config, write_tenant

# Real servers that do not answer (a PostgreSQL/Redis outage): provisioning stays pending.
DOWN = ('[postgres]\ndsn = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=1"\n'
        '[redis]\nurl = "redis://127.0.0.1:1/0"\n')


async def test_verbs_during_a_reload_answer_with_an_operator_error(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, extra=DOWN))
    unexpected: list[BaseException] = []
    async with open_servers(settings) as servers, trio.open_nursery() as nursery:
        supervisor = Supervisor(settings.run_dir, settings.state_dir, settings.logs)
        await nursery.start(supervisor.run)
        fleet = Fleet(settings, supervisor, Provisioner(settings, servers), nursery)
        # trio runs each batch of ready tasks in a random order, so twenty reloads give the
        # callers many chances to land between "tenant known" and "its provisioning begun".
        for n in range(20):
            tid = f"race{n}"
            write_tenant(tmp_path, tid)
            done = trio.Event()

            async def reload(done: trio.Event = done) -> None:
                await fleet.reload()
                done.set()

            async def poke(tid: str = tid, done: trio.Event = done) -> None:
                while not done.is_set():
                    for call in (fleet.stop, fleet.start, fleet.restart):
                        try:
                            await call(tid)
                        except OracleError:
                            pass            # NotFound before, Unavailable while provisioning
                        except Exception as e:  # what the control plane would turn into INTERNAL
                            unexpected.append(e)
                    await trio.sleep(0)

            async with trio.open_nursery() as race:
                race.start_soon(poke)
                race.start_soon(reload)
        nursery.cancel_scope.cancel()
    assert not unexpected, repr(unexpected[:3])


async def test_a_reload_during_an_outage_attempts_only_the_tenant_it_adds(tmp_path: Path) -> None:
    """Tenants already waiting for their servers keep their own backoff: a reload (and so a
    `tenant add`) during an outage costs one attempt for the tenant it adds, not one per tenant
    of the fleet, and does not restart every retry in the same instant."""
    settings = load_settings(write_config(tmp_path, extra=DOWN))
    async with open_servers(settings) as servers, trio.open_nursery() as nursery:
        supervisor = Supervisor(settings.run_dir, settings.state_dir, settings.logs)
        await nursery.start(supervisor.run)
        fleet = Fleet(settings, supervisor, Provisioner(settings, servers), nursery)
        for n in range(5):
            write_tenant(tmp_path, f"waiting{n}")
        await fleet.reload()
        assert all(fleet.provisioning[f"waiting{n}"].status.startswith("UNAVAILABLE") for n in range(5))
        # First attempts publish a `provision` event; background retries only update the status.
        events = fleet.events.subscribe(buffer=1000)
        write_tenant(tmp_path, "added")
        await fleet.reload()
        attempted = []
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            if event.kind == "provision":
                attempted.append(event.tenant)
        assert attempted == ["added"]
        assert all(fleet.provisioned.retrying(t) for t in [f"waiting{n}" for n in range(5)] + ["added"])
        nursery.cancel_scope.cancel()
