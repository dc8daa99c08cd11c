"""The composition root: one trio nursery holding supervisor, data servers, fleet and control plane."""

from __future__ import annotations

import logging
import os
import signal
import time
from functools import partial

import trio
from prometheus_client import CollectorRegistry

from oraclewad.control import serve_control
from oraclewad.fleet import Fleet
from oraclewad.operations import EventView
from oraclewad.pidfile import PidFile
from oraclewad.provision import Provisioner, Servers, open_servers
from oraclewad.provision.audit import open_server_warnings
from oraclewad.sdnotify import SystemdNotifier
from oraclewad.settings import Settings
from oraclewad.supervisor import Supervisor
from oraclewad.tenants.ports import ephemeral_overlap

log = logging.getLogger("oraclewad")


def prepare_directories(settings: Settings) -> None:
    """Create the daemon's folders; none is world-readable, secrets only for the daemon's user."""
    for path, mode in ((settings.state_dir, 0o750), (settings.secrets_dir, 0o700),
                       (settings.run_dir, 0o750), (settings.log_dir, 0o750),
                       (settings.tenants_dir, 0o755)):
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        if path != settings.tenants_dir:
            os.chmod(path, mode)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _shutdown_requested(signum: int, frame: object) -> None:
    """Handler outside the receiver's lifetime: a stop request while starting up or in the last
    steps of shutdown. Trio re-raises signals still queued when its receiver closes; with this
    handler in place a repeated SIGTERM/SIGINT is the same request, never a death by signal."""
    _late_signals.append(signum)


_late_signals: list[int] = []


async def run_daemon(settings: Settings, notifier: SystemdNotifier | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads tenants.d. Children stop before the data servers."""
    notifier = notifier or SystemdNotifier()
    pidfile = PidFile(settings.state_dir / "oraclewad.pid")
    pidfile.acquire()
    saved = {s: signal.signal(s, _shutdown_requested) for s in (*STOP_SIGNALS, signal.SIGHUP)}
    try:
        prepare_directories(settings)
        if (warning := ephemeral_overlap(settings.port_range)) is not None:
            log.warning("%s", warning)
        with trio.open_signal_receiver(*STOP_SIGNALS, signal.SIGHUP) as signals:
            notifier.notify("STATUS=starting data servers")
            async with open_servers(settings) as servers, trio.open_nursery() as nursery:
                for warning in await trio.to_thread.run_sync(server_warnings, settings, servers):
                    log.warning("%s", warning)
                supervisor = Supervisor(settings.run_dir, settings.state_dir, settings.logs,
                                        max_parallel_starts=settings.max_parallel_starts)
                await nursery.start(supervisor.run)
                fleet = Fleet(settings, supervisor, Provisioner(settings, servers), nursery)
                if servers.keeper is not None:
                    servers.keeper.on_change = partial(_server_event, fleet)
                    nursery.start_soon(servers.keeper.run)
                nursery.start_soon(fleet.forward_supervisor_events)
                if settings.usage_interval:
                    nursery.start_soon(fleet.sample_usage_forever, settings.usage_interval)
                registry = CollectorRegistry()      # daemon-wide metrics kept by the control plane
                await nursery.start(partial(serve_control, settings, fleet, registry=registry))
                ready = trio.Event()                # /readyz: first start done, not stopping
                if settings.metrics_listen:
                    # Imported only when serving: hypercorn and starlette are about 3 MiB of RSS.
                    from oraclewad.metrics import serve_metrics

                    await nursery.start(partial(
                        serve_metrics, settings.metrics_listen, fleet, registry=registry,
                        child_timeout=settings.metrics_child_timeout,
                        ready=lambda: ready.is_set() and not nursery.cancel_scope.cancel_called))
                notifier.notify("STATUS=starting tenants")
                await _reload(fleet)
                await fleet.wait_spawned(timeout=30)
                log.info("started: %s", fleet.summary())
                notifier.notify("READY=1", f"STATUS={fleet.summary()}")
                ready.set()
                if notifier.watchdog_interval:
                    nursery.start_soon(_watchdog, notifier)
                nursery.start_soon(_status_loop, notifier, fleet)
                # A stop asked for before the receiver listened (recorded by the handler) counts.
                stop_signal = next((s for s in _late_signals if s in STOP_SIGNALS), None)
                if stop_signal is None:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            notifier.notify("RELOADING=1")
                            await _reload(fleet)
                            notifier.notify("READY=1", f"STATUS={fleet.summary()}")
                            continue
                        stop_signal = signum
                        break
                log.info("received %s: stopping every service", signal.Signals(stop_signal).name)
                notifier.notify("STOPPING=1", "STATUS=stopping services")
                nursery.cancel_scope.cancel()
    finally:
        # Still inside the handlers above: a signal during these last steps changes nothing.
        pidfile.release()
        notifier.close()
        _late_signals.clear()
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _server_event(fleet: Fleet, name: str, state: str, message: str) -> None:
    fleet.events.publish(EventView(ts=time.time(), tenant="", service=f"embedded {name}",
                                   kind="server", state=state, message=message))


async def _reload(fleet: Fleet) -> None:
    """A reload that fails (whatever the cause) is logged; the daemon and its tenants go on."""
    try:
        view = await fleet.reload()
    except Exception:
        log.exception("reload failed: tenants keep running as they were")
        return
    for problem in view.problems:
        log.error("config problem (tenant skipped): %s", problem)
    log.info("reloaded: %s", view.describe())


def server_warnings(settings: Settings, servers: Servers) -> list[str]:
    """Open doors on the external servers (the embedded ones are ours, configured shut)."""
    return open_server_warnings(
        settings, None if servers.embedded_postgres else servers.postgres_dsn,
        None if servers.embedded_redis else servers.redis)


async def _watchdog(notifier: SystemdNotifier) -> None:
    # Sent from the trio loop itself, so a wedged loop is exactly what systemd notices.
    assert notifier.watchdog_interval is not None
    while True:
        notifier.notify("WATCHDOG=1")
        await trio.sleep(notifier.watchdog_interval)


async def _status_loop(notifier: SystemdNotifier, fleet: Fleet) -> None:
    """STATUS= follows state changes within a second (an unhealthy service shows in
    `systemctl status` while it is unhealthy), at most two datagrams per second. Without a
    change it wakes once a minute, a safety net: the summary of 200 services is not free."""
    last = ""
    while True:  # one subscription for as long as it lasts: nothing is missed between wakeups
        async with fleet.supervisor.subscribe() as changes:
            while True:
                with trio.move_on_after(60):
                    try:
                        await changes.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        break   # dropped for falling behind: subscribe again
                await trio.sleep(0.5)   # coalesce a burst (a whole fleet starting) into one line
                summary = fleet.summary()
                if summary != last:
                    notifier.notify(f"STATUS={summary}")
                    last = summary
