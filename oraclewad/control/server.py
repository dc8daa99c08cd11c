"""The control server's lifecycle: grpc sync servers on thread pools, run from a trio task."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import trio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc
from oraclewad.contract import MAX_UNIX_PATH
from oraclewad.control.auth import TokenAuth, load_or_create_token
from oraclewad.control.bridge import SHUTTING_DOWN, Bridge
from oraclewad.control.servicer import ControlServicer, requests_counter
from oraclewad.control.streams import EventFeed, Streams
from oraclewad.errors import FailedPrecondition
from oraclewad.operations import Operations
from oraclewad.settings import Settings

log = logging.getLogger("oraclewad.control")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Control"].full_name     # oraclewa.v1.Control


@dataclass(frozen=True)
class ControlLimits:
    """Sizing of the control plane. Every open stream holds a pool thread until it ends."""

    max_streams: int = 16           # the 17th TailLogs/WatchEvents gets RESOURCE_EXHAUSTED
    unary_workers: int = 16         # threads left for unary calls however many streams are open
    stream_queue: int = 256         # events buffered per stream before it counts as too slow
    stall_timeout: float = 30.0     # a stream blocked this long on a full client window is dropped
    grace: float = 2.0              # calls in flight get this long at shutdown

    @property
    def workers(self) -> int:
        return self.max_streams + self.unary_workers + 2   # +2: reflection or a stray stream at the cap


def _build_server(servicer: ControlServicer, health_servicer: health.HealthServicer, limits: ControlLimits,
                  interceptors: tuple[grpc.ServerInterceptor, ...], name: str) -> grpc.Server:
    pool = futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix=f"control-{name}")
    # maximum_concurrent_rpcs == max_workers: an RPC beyond it is refused (RESOURCE_EXHAUSTED) at once
    # instead of queueing behind streams that may never end.
    server = grpc.server(pool, interceptors=interceptors, maximum_concurrent_rpcs=limits.workers,
                         options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_ControlServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    return server


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> None:
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as e:
        raise FailedPrecondition(f"control: cannot listen on {address}: {e}") from None
    if port == 0:
        raise FailedPrecondition(f"control: cannot listen on {address} (in use, or not a local address?)")


def prepare_socket_dir(socket: Path) -> None:
    """The socket's directory is the unix listener's access control: 0750, even if it existed."""
    if len(os.fsencode(socket)) > MAX_UNIX_PATH:
        raise FailedPrecondition(f"control socket path {socket} is longer than {MAX_UNIX_PATH} bytes: "
                                 "set a shorter [control] socket in oraclewad.toml")
    socket.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chmod(socket.parent, 0o750)
    if socket.exists() and not stat.S_ISSOCK(socket.lstat().st_mode):
        raise FailedPrecondition(f"control socket path {socket} exists and is not a socket: move it away")


def _tls_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    try:
        pair = (key.read_bytes(), cert.read_bytes())
    except OSError as e:
        raise FailedPrecondition(f"control: cannot read TLS key/certificate: {e}") from None
    return grpc.ssl_server_credentials([pair])


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _stop(servers: list[grpc.Server], grace: float) -> None:
    done = [server.stop(grace) for server in servers]

    def wait() -> None:
        for event in done:
            event.wait(grace + 1)

    with trio.move_on_after(grace + 2):
        await trio.to_thread.run_sync(wait, abandon_on_cancel=True)


async def serve_control(settings: Settings, ops: Operations, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                        limits: ControlLimits | None = None,
                        registry: CollectorRegistry | None = None) -> None:
    """Serve oraclewa.v1.Control (+ health, reflection) until cancelled.

    Unix socket `settings.control.socket` (directory 0750, socket 0660, no token); optionally TCP
    on `settings.control.tcp` with a bearer token from `settings.control.token_file` and TLS when
    tls_cert/tls_key are set. The caller holds the daemon's pidfile lock: grpc replaces an existing
    socket file when it binds.
    """
    limits = limits or ControlLimits()
    cfg = settings.control
    bridge = Bridge(trio.lowlevel.current_trio_token())
    streams = Streams(limits.max_streams, limits.stall_timeout)
    feed = EventFeed(ops, queue=limits.stream_queue)
    servicer = ControlServicer(ops, bridge, streams, feed,
                               requests_counter(registry) if registry is not None else None)
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    servers: list[grpc.Server] = []
    socket_path = cfg.socket
    async with trio.open_nursery() as nursery:
        try:
            prepare_socket_dir(socket_path)
            unix = _build_server(servicer, health_servicer, limits, (), "unix")
            servers.append(unix)
            _bind(unix, f"unix:{socket_path}")
            os.chmod(socket_path, 0o660)
            if cfg.tcp:
                token = await trio.to_thread.run_sync(load_or_create_token, cfg.token_file)
                tcp = _build_server(servicer, health_servicer, limits, (TokenAuth(token),), "tcp")
                servers.append(tcp)
                if cfg.tls_cert and cfg.tls_key:
                    _bind(tcp, cfg.tcp, _tls_credentials(cfg.tls_cert, cfg.tls_key))
                else:
                    _bind(tcp, cfg.tcp)
                    if not _is_loopback(cfg.tcp):
                        log.warning("control: %s is not loopback and has no TLS: the token crosses the "
                                    "network in clear text; set [control] tls_cert and tls_key", cfg.tcp)
            nursery.start_soon(feed.run)
            nursery.start_soon(streams.watchdog)
            for server in servers:
                server.start()
            log.info("control: serving on unix:%s%s", socket_path, f" and tcp {cfg.tcp}" if cfg.tcp else "")
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                health_servicer.enter_graceful_shutdown()       # NOT_SERVING for every service
                bridge.shut()
                streams.drop_all(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                await _stop(servers, limits.grace)
                if servers and socket_path.is_socket():
                    socket_path.unlink(missing_ok=True)
            nursery.cancel_scope.cancel()


__all__ = ["ControlLimits", "serve_control"]
