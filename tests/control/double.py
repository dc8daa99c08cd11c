"""IN-PROCESS TEST DOUBLE of `Operations` and a harness that serves it with the real control server.

The double has real trio behaviour (a lock around tenant writes, services that become ready
after a sleep, bounded event fan-out that drops slow watchers, files written atomically) so
the control plane's threading, streaming and error mapping are exercised for real. The
real-daemon tests (test_real_daemon.py) cover the same API against `oraclewad run`.
"""

from __future__ import annotations

import io
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import tomli_w
import trio

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc
from oraclewad.control import ControlLimits, serve_control
from oraclewad.errors import AlreadyExists, InvalidArgument, NotFound, Problem, Unavailable
from oraclewad.operations import (
    EventView,
    HealthView,
    MetricsView,
    NewTenant,
    ReloadView,
    ServiceView,
    TenantView,
)
from oraclewad.settings import Settings, load_settings

ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
EXTRA_TABLES = {"antiban", "recovery", "broadcast", "templates"}


@dataclass
class _Service:
    tenant: str
    name: str
    port: int
    state: str = "starting"
    pid: int | None = None
    started: float | None = None
    restarts: int = 0
    ready: bool = False

    def view(self) -> ServiceView:
        uptime = None if self.started is None else time.monotonic() - self.started
        return ServiceView(
            self.tenant,
            self.name,
            self.state,
            self.pid,
            uptime,
            self.restarts,
            self.ready,
            self.port,
            "bundled",
        )


@dataclass
class _Tenant:
    new: NewTenant
    source: Path
    services: dict[str, _Service] = field(default_factory=dict)


class InProcessOps:
    """Implements oraclewad.operations.Operations in memory (plus files under the settings' dirs)."""

    def __init__(self, settings: Settings, *, ready_delay: float = 0.05) -> None:
        self.settings = settings
        self.ready_delay = ready_delay
        self.tenants: dict[str, _Tenant] = {}
        self._lock = trio.Lock()
        self._watchers: set[trio.MemorySendChannel[EventView]] = set()
        self._next_port = 4100
        self._nursery: trio.Nursery | None = None
        self.hang = trio.Event()  # health() waits on this when `hang_health` is set
        self.hang_health = False
        self.raise_in_metrics: Exception | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- helpers ----

    def publish(self, tenant: str, service: str, kind: str, state: str = "", message: str = "") -> None:
        event = EventView(time.time(), tenant, service, kind, state, message)
        for send in list(self._watchers):
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._watchers.discard(send)
                send.close()

    def _set(self, svc: _Service, state: str) -> None:
        svc.state = state
        self.publish(svc.tenant, svc.name, "state", state)

    async def _launch(self, svc: _Service) -> None:
        self._set(svc, "starting")
        svc.ready = False
        svc.pid = 10_000 + svc.port
        svc.started = time.monotonic()
        await trio.sleep(self.ready_delay)
        if svc.state == "starting":
            svc.ready = True
            self._set(svc, "running")
            self._log(svc, "ready")

    def _log(self, svc: _Service, msg: str) -> None:
        path = self.settings.log_dir / svc.tenant / svc.name / "combined.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f'{{"ts": {time.time():.3f}, "level": "info", "msg": "{msg}"}}\n')

    def _tenant(self, tenant_id: str) -> _Tenant:
        if tenant_id not in self.tenants:
            raise NotFound(f"no tenant {tenant_id!r}; `oraclectl tenant list` shows the tenants")
        return self.tenants[tenant_id]

    def _units(self, tenant_id: str, service: str | None) -> list[_Service]:
        tenant = self._tenant(tenant_id)
        if service is None:
            return list(tenant.services.values())
        if service not in tenant.services:
            raise NotFound(f"tenant {tenant_id!r} has no service {service!r}")
        return [tenant.services[service]]

    # ---- Operations ----

    async def add_tenant(self, new: NewTenant, *, wait: bool, timeout: float) -> TenantView:
        if not ID_RE.fullmatch(new.id):
            raise InvalidArgument(
                f"invalid tenant id {new.id!r}: a letter first, then letters, digits, "
                "'_' or '-', at most 40 characters",
                field="id",
            )
        source = self.settings.tenants_dir / f"{new.id}.toml"
        unknown = sorted(set(new.extra) - EXTRA_TABLES)
        if unknown:
            raise InvalidArgument(
                [Problem(str(source), k, "unknown key: remove it or check its spelling") for k in unknown]
            )
        async with self._lock:
            if new.id.lower() in {t.lower() for t in self.tenants}:
                raise AlreadyExists(f"tenant {new.id!r} already exists ({source}): remove it first")
            await trio.sleep(0.02)  # the file write: widens the window a racing add would need
            doc: dict[str, Any] = {"id": new.id, "name": new.name or new.id, "services": list(new.services)}
            if new.evolution_api_key:
                key = self.settings.secrets_dir / f"{new.id}.evolution.key"
                key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(new.evolution_api_key)
                doc["evolution"] = {"api_key_file": str(key)}
            doc.update(new.extra)
            self.settings.tenants_dir.mkdir(parents=True, exist_ok=True)
            tmp = source.with_suffix(".tmp")
            tmp.write_text(tomli_w.dumps(doc))
            tmp.rename(source)
            tenant = _Tenant(new, source)
            for name in new.services:
                port = new.extra.get(name, {}).get("port") or self._next_port
                self._next_port += 1
                tenant.services[name] = _Service(new.id, name, port)
            self.tenants[new.id] = tenant
            self.publish(new.id, "", "tenant_added")
            assert self._nursery is not None
            for svc in tenant.services.values():
                self._nursery.start_soon(self._launch, svc)
        if wait:
            with trio.move_on_after(timeout):
                while not all(s.ready for s in tenant.services.values()):
                    await trio.sleep(0.01)
                return self.get_tenant(new.id)
            raise Unavailable(f"tenant {new.id!r} is not ready after {timeout:g}s")
        return self.get_tenant(new.id)

    async def remove_tenant(self, tenant_id: str, *, purge: bool) -> list[str]:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            for svc in tenant.services.values():
                self._set(svc, "stopped")
            tenant.source.unlink()
            del self.tenants[tenant_id]
            lines = [f"removed {tenant.source.name}"] + [f"stopped {tenant_id}/{s}" for s in tenant.services]
            if purge:
                lines.append(f"dropped databases of {tenant_id}")
            self.publish(tenant_id, "", "tenant_removed")
            return lines

    def list_tenants(self) -> list[TenantView]:
        return [self.get_tenant(t) for t in sorted(self.tenants, key=str.lower)]

    def get_tenant(self, tenant_id: str) -> TenantView:
        t = self._tenant(tenant_id)
        ports = {name: s.port for name, s in t.services.items()}
        webhook = f"http://127.0.0.1:{ports['recovery']}/webhooks/orders" if "recovery" in ports else ""
        return TenantView(
            id=tenant_id,
            name=t.new.name or tenant_id,
            services=tuple(t.services),
            release="bundled",
            ports=ports,
            webhook_url=webhook,
            secrets_file=str(self.settings.secrets_dir / f"{tenant_id}.toml"),
            source_file=str(t.source),
            provisioned=True,
            states=tuple(s.view() for s in t.services.values()),
        )

    def status(self, tenant_id: str | None = None) -> list[ServiceView]:
        ids = [tenant_id] if tenant_id else sorted(self.tenants, key=str.lower)
        return [s.view() for tid in ids for s in self._tenant(tid).services.values()]

    async def health(self, tenant_id: str | None = None) -> list[HealthView]:
        if self.hang_health:
            await self.hang.wait()
        await trio.sleep(0)
        return [
            HealthView(
                v.tenant,
                v.service,
                "ok" if v.ready else "failing",
                {"postgres": {"status": "ok", "ms": 1.5}, "redis": True},
                "",
            )
            for v in self.status(tenant_id)
        ]

    async def _each(self, tenant_id: str, service: str | None, stop: bool, start: bool) -> list[ServiceView]:
        units = self._units(tenant_id, service)
        for svc in units:
            if stop:
                self._set(svc, "stopped")
                svc.ready, svc.pid, svc.started = False, None, None
            if start:
                if stop:
                    svc.restarts += 1
                await self._launch(svc)
        return [s.view() for s in units]

    async def start(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each(tenant_id, service, stop=False, start=True)

    async def stop(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each(tenant_id, service, stop=True, start=False)

    async def restart(self, tenant_id: str, service: str | None = None) -> list[ServiceView]:
        return await self._each(tenant_id, service, stop=True, start=True)

    async def reload(self) -> ReloadView:
        await trio.sleep(0)
        self.publish("", "", "reload")
        return ReloadView(
            unchanged=tuple(sorted(self.tenants)), problems=("tenants.d/bad.toml: id: invalid",)
        )

    async def metrics(self, tenant_id: str | None = None) -> list[MetricsView]:
        if self.raise_in_metrics is not None:
            raise self.raise_in_metrics
        return [
            MetricsView(
                v.tenant,
                v.service,
                {
                    "restarts": float(v.restarts),
                    "uptime_s": v.uptime_s or 0.0,
                    "rss_bytes": 41_000_000.0,
                    "requests_total": 12.0,
                },
            )
            for v in self.status(tenant_id)
        ]

    def log_file(self, tenant_id: str, service: str, channel: str) -> str:
        self._units(tenant_id, service)
        path = self.settings.log_dir / tenant_id / service / f"{channel}.log"
        if not path.exists():
            raise NotFound(f"no {channel!r} log for {tenant_id}/{service} yet")
        return str(path)

    async def watch_events(self) -> AsyncIterator[EventView]:
        send, receive = trio.open_memory_channel[EventView](256)
        self._watchers.add(send)
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            self._watchers.discard(send)
            send.close()

    def releases(self) -> Sequence[str]:
        return ["bundled", "2.1.0"]


# ---- harness ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmp() -> Path:
    # A unix socket path must fit in 107 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="owa-", dir="/tmp"))


def write_settings(root: Path, *, tcp: str | None = None, tls: tuple[Path, Path] | None = None) -> Settings:
    control = ""
    if tcp:
        control += f'tcp = "{tcp}"\n'
    if tls:
        control += f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n'
    config = root / "oraclewad.toml"
    config.write_text(f"""
[daemon]
state_dir = "state"
log_dir = "log"
run_dir = "run"
[control]
{control}
""")
    return load_settings(config)


@dataclass
class Harness:
    settings: Settings
    ops: InProcessOps
    cancel: Callable[[], None]

    @property
    def socket(self) -> Path:
        return self.settings.control.socket

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.socket}")

    def stub(self) -> pb_grpc.ControlStub:
        return pb_grpc.ControlStub(self.channel())

    async def call(self, method: str, request: Any, **kw: Any) -> Any:
        """A unary call from a worker thread (a blocking call on the trio thread would deadlock)."""
        stub = self.stub()
        if method in ("TailLogs", "WatchEvents"):  # server streams: collect them
            return await trio.to_thread.run_sync(
                lambda: list(getattr(stub, method)(request, timeout=10, **kw))
            )
        return await trio.to_thread.run_sync(partial(getattr(stub, method), request, timeout=10, **kw))

    async def ctl(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """oraclectl in a worker thread against this server: (exit code, stdout, stderr)."""
        from oraclectl.main import main

        out, err = io.StringIO(), io.StringIO()
        code = await trio.to_thread.run_sync(
            lambda: main(
                ["--socket", str(self.socket), *argv], stdout=out, stderr=err, stdin=io.StringIO(stdin)
            )
        )
        return code, out.getvalue(), err.getvalue()

    async def ctl_process(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        result = await trio.run_process(
            [sys.executable, "-m", "oraclectl", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    async def add(self, tenant_id: str, **kw: Any) -> pb.Tenant:
        request = pb.AddTenantRequest(tenant=pb.NewTenant(id=tenant_id, **kw), wait=True, timeout_s=10)
        return await self.call("AddTenant", request)


@asynccontextmanager
async def serving(
    root: Path,
    *,
    limits: ControlLimits | None = None,
    tcp: bool = False,
    tls: tuple[Path, Path] | None = None,
) -> AsyncIterator[Harness]:
    settings = write_settings(root, tcp=f"127.0.0.1:{free_port()}" if tcp else None, tls=tls)
    ops = InProcessOps(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.run)
        serve_scope = trio.CancelScope()

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with serve_scope:
                await serve_control(settings, ops, task_status=task_status, limits=limits)

        await nursery.start(serve)
        yield Harness(settings, ops, serve_scope.cancel)
        nursery.cancel_scope.cancel()


def fast_limits(**kw: Any) -> ControlLimits:
    return replace(ControlLimits(stall_timeout=1.0, grace=0.5), **kw)
