"""IN-PROCESS TEST DOUBLE of `oraclewad.operations.Operations`, served by the real control server.

Every other control-plane and oraclectl test runs against a real `oraclewad run`. The double is kept
only for faults the real daemon cannot produce on demand; exactly these tests use it (through the
`control` fixture in tests/control/conftest.py):

- test_control.py::test_internal_errors_stay_inside: an Operations method raising an unexpected
  exception (`raise_in_metrics`) must become INTERNAL without its text. Nothing in the real daemon
  raises a foreign exception on request.
- test_control.py::test_a_slow_event_watcher_is_dropped_without_blocking_the_daemon: floods the event
  feed (`publish`, thousands of 8 KB events in a second) faster than a watcher reads. The real daemon
  publishes an event per service state change, far too few to fill a watcher's queue and window.
- test_control.py::test_a_fleet_of_thousands_of_tenants_lists_in_pages: `tenant list` with 2000
  tenants whose every field is as long as the daemon allows (`list_tenants`: about 18 MB in all). A
  real daemon would run 4000 child processes for that; the paging under test is the control
  plane's and oraclectl's, which the double serves unchanged.
- test_control.py::test_a_stalled_log_follower_is_dropped: needs the control server's stall timeout
  at 1 s (`fast_limits`); the real daemon's is fixed at 30 s (ControlLimits has no config key), too
  slow for the suite. The double only hands out the log file path (`log_file`, `watch_log`).

Any other Operations method is deliberately missing: a test calling one fails loudly (INTERNAL).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import trio

from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc
from oraclewad.control import ControlLimits, serve_control
from oraclewad.errors import NotFound
from oraclewad.events import EventHub
from oraclewad.operations import EventView, MetricsView, TenantView
from oraclewad.settings import Settings, load_settings


class FaultyOps:
    """The few Operations methods the tests above call, with their fault switches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events = EventHub()  # the daemon's own fan-out
        self.raise_in_metrics: Exception | None = None
        self.tenants: list[TenantView] = []

    def list_tenants(self) -> list[TenantView]:
        return list(self.tenants)

    def publish(self, tenant: str, service: str, kind: str, state: str = "", message: str = "") -> None:
        self.events.publish(EventView(time.time(), tenant, service, kind, state, message))

    def watch_events(self) -> AsyncIterator[EventView]:
        return self.events.watch()

    async def metrics(self, tenant_id: str | None = None) -> list[MetricsView]:
        if self.raise_in_metrics is not None:
            raise self.raise_in_metrics
        return []

    def log_file(self, tenant_id: str, service: str, channel: str) -> str:
        """log_dir/TENANT/SERVICE/CHANNEL.log, once the test has written it."""
        path = self.log_path(tenant_id, service, channel)
        if not path.exists():
            raise NotFound(f"no {channel!r} log for {tenant_id}/{service} yet")
        return str(path)

    def watch_log(self, tenant_id: str, service: str, channel: str,
                  on_new_file: Callable[[], None]) -> Callable[[], None]:
        return lambda: None   # the test's file never rotates

    def log_path(self, tenant_id: str, service: str, channel: str = "combined") -> Path:
        return self.settings.log_dir / tenant_id / service / f"{channel}.log"


def short_tmp() -> Path:
    # A unix socket path must fit in 107 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="owa-", dir="/tmp"))


def write_settings(root: Path) -> Settings:
    config = root / "oraclewad.toml"
    config.write_text('[daemon]\nstate_dir = "state"\nlog_dir = "log"\nrun_dir = "run"\n')
    return load_settings(config)


@dataclass
class Harness:
    settings: Settings
    ops: FaultyOps

    @property
    def socket(self) -> Path:
        return self.settings.control.socket

    def stub(self) -> pb_grpc.ControlStub:
        return pb_grpc.ControlStub(grpc.insecure_channel(f"unix:{self.socket}"))

    async def call(self, method: str, request: Any, **kw: Any) -> Any:
        """A unary call from a worker thread (a blocking call on the trio thread would deadlock)."""
        return await trio.to_thread.run_sync(partial(getattr(self.stub(), method), request, timeout=10, **kw))


@asynccontextmanager
async def serving(root: Path, *, limits: ControlLimits | None = None) -> AsyncIterator[Harness]:
    """The real control server on root/run/oraclewad.sock over FaultyOps, until the block ends."""
    settings = write_settings(root)
    ops = FaultyOps(settings)
    async with trio.open_nursery() as nursery:
        serve: Callable[..., Any] = partial(serve_control, settings, ops, limits=limits)
        await nursery.start(serve)
        yield Harness(settings, ops)
        nursery.cancel_scope.cancel()


def fast_limits(**kw: Any) -> ControlLimits:
    """Stall timeout 1 s (30 s in the daemon) and an 8-event watcher queue (256 in the daemon)."""
    return replace(ControlLimits(stall_timeout=1.0, grace=0.5, stream_queue=8), **kw)
