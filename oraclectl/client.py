"""Where the daemon is, how to reach it, and what its answers mean for the exit code."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc

INSTALLED_SOCKET = "/run/oraclewa/oraclewad.sock"
DEFAULT_CONFIGS = ("oraclewad.toml", "/etc/oraclewa/oraclewad.toml")
UNARY_TIMEOUT = 10.0
# The daemon sets this trailer on every error it returns itself (oraclewad.control.bridge).
ANSWERED_BY = ("oraclewa-answered-by", "oraclewad")
CONNECT_TIMEOUT = 5.0
HINT = "Is the daemon running? Check `systemctl status oraclewad`, or start it with `make run` in a checkout."

# Codes that mean "never got to the daemon" rather than "the daemon said no".
_TRANSPORT_DETAILS = re.compile(r"failed to connect|connection refused|connect failed|socket closed|"
                                r"no such file|handshake|ssl|dns resolution|unreachable|"
                                r"connection reset|broken pipe|goaway", re.IGNORECASE)


R = TypeVar("R")
T = TypeVar("T")


class Unreachable(Exception):
    """The daemon could not be reached (exit 3)."""


class Refused(Exception):
    """The daemon answered with an error (exit 1)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def find_config(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The daemon config oraclectl reads its socket from, found as `oraclewad` finds it:
    --config, $OWA_CONFIG, ./oraclewad.toml, /etc/oraclewa/oraclewad.toml (None: none exists)."""
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("OWA_CONFIG"):
        return env["OWA_CONFIG"]
    return next((os.path.abspath(c) for c in DEFAULT_CONFIGS if os.path.isfile(c)), None)


def resolve_socket(env: Mapping[str, str] | None = None, config: str | None = None) -> str:
    """$OWA_SOCKET; else the socket named by the daemon config (find_config); else the installed
    default. Never a ./var/run socket of whatever folder oraclectl happens to run in: a folder
    counts only when it holds an oraclewad.toml, as it does for the daemon."""
    env = os.environ if env is None else env
    if env.get("OWA_SOCKET") and not config:
        return env["OWA_SOCKET"]
    path = find_config(config, env)
    if path is None:
        return INSTALLED_SOCKET
    try:
        return socket_from_config(path)
    except ConfigError:
        if config or env.get("OWA_CONFIG"):
            raise
        return INSTALLED_SOCKET     # /etc/oraclewa/oraclewad.toml unreadable for this user


class ConfigError(Exception):
    """The daemon config named by --config cannot tell where the socket is."""


def socket_from_config(path: str) -> str:
    """The control socket a daemon with this oraclewad.toml listens on: [control] socket, else
    <[daemon] run_dir>/oraclewad.sock, relative paths against the config's folder (as oraclewad
    resolves them). Read with tomllib only: oraclectl does not import the daemon."""
    import tomllib

    config = Path(path)
    try:
        doc = tomllib.loads(config.read_text())
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    control, daemon = doc.get("control", {}), doc.get("daemon", {})
    socket_path = control.get("socket") if isinstance(control, dict) else None
    if not isinstance(socket_path, str) or not socket_path:
        run_dir = daemon.get("run_dir", "var/run") if isinstance(daemon, dict) else "var/run"
        if not isinstance(run_dir, str):
            raise ConfigError(f"--config {path}: [daemon] run_dir must be a string")
        socket_path = str(Path(run_dir) / "oraclewad.sock")
    return str(config.parent / Path(socket_path).expanduser())


@dataclass(frozen=True)
class Target:
    socket: str | None = None
    addr: str | None = None
    token_file: str | None = None
    tls_ca: str | None = None

    @property
    def label(self) -> str:
        if self.socket is not None:
            return f"unix:{os.path.abspath(self.socket)}"
        scheme = "https" if self.tls_ca else "tcp"
        return f"{scheme}://{self.addr}"


def _check_unix(path: str) -> None:
    # A plain connect tells "no daemon" apart from "daemon said no" at once, with the reason.
    where = os.path.abspath(path)
    if not os.path.exists(path):
        raise Unreachable(f"cannot reach the daemon at unix:{where}: no such socket file. {HINT}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CONNECT_TIMEOUT)
    try:
        s.connect(path)
    except PermissionError:
        raise Unreachable(f"cannot reach the daemon at unix:{where}: permission denied. Run as root or as "
                          "a member of the daemon's group (the socket directory is mode 0750).") from None
    except OSError as e:
        raise Unreachable(f"cannot reach the daemon at unix:{where}: {e.strerror or e}. {HINT}") from None
    finally:
        s.close()


def _check_tcp(target: Target) -> None:
    # A refused port fails at once here; grpc would keep retrying until the connect timeout.
    host, _, port = (target.addr or "").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except ValueError:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"--addr {target.addr}: must be HOST:PORT") from None
    except OSError as e:
        raise Unreachable(f"cannot reach the daemon at {target.label}: {e.strerror or e}. {HINT}") from None


class Client:
    """A channel and stub for one command; every failure becomes Unreachable or Refused."""

    def __init__(self, target: Target, *, timeout: float = UNARY_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = ()
        if target.socket is not None:
            _check_unix(target.socket)
            self.channel = grpc.insecure_channel(f"unix:{os.path.abspath(target.socket)}")
        else:
            if not target.addr:
                raise ValueError("either a socket or an address")
            if target.token_file:
                try:
                    token = Path(target.token_file).read_text().strip()
                except OSError as e:
                    raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                                  f"cannot read the token file {target.token_file}: {e.strerror}") from None
                self.metadata = (("authorization", f"Bearer {token}"),)
            if target.tls_ca:
                try:
                    ca = Path(target.tls_ca).read_bytes()
                except OSError as e:
                    raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                                  f"cannot read the CA file {target.tls_ca}: {e.strerror}") from None
                self.channel = grpc.secure_channel(target.addr, grpc.ssl_channel_credentials(ca))
            else:
                self.channel = grpc.insecure_channel(target.addr)
            _check_tcp(target)
            try:
                grpc.channel_ready_future(self.channel).result(timeout=CONNECT_TIMEOUT)
            except grpc.FutureTimeoutError:
                self.channel.close()
                tls = " (TLS: is --tls-ca the CA that signed its certificate?)" if target.tls_ca else ""
                raise Unreachable(f"cannot reach the daemon at {target.label} within "
                                  f"{CONNECT_TIMEOUT:g}s{tls}. {HINT}") from None
        self.stub = pb_grpc.ControlStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failure(self, error: grpc.RpcError) -> Exception:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else "") or str(code)
        trailers = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
        answered = trailers.get(ANSWERED_BY[0]) == ANSWERED_BY[1]
        if code == grpc.StatusCode.UNAVAILABLE and not answered and _TRANSPORT_DETAILS.search(details):
            return Unreachable(f"lost the daemon at {self.target.label}: {details}. {HINT}")
        return Refused(code, details)

    def _unary(self, rpc: Callable[..., R], request: Any, timeout: float | None) -> R:
        try:
            return rpc(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise self._failure(e) from None

    def _stream(self, rpc: Callable[..., Any], request: Any) -> Iterator[Any]:
        call = rpc(request, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED and not call.is_active():
                return          # we cancelled it ourselves (Ctrl-C, closed pipe)
            raise self._failure(e) from None
        finally:
            call.cancel()

    def _pages(self, rpc: Callable[..., Any], request: Any, items_of: Callable[[Any], Iterable[T]],
               timeout: float | None) -> list[T]:
        """Every page of a list answer (each page is far under the 4 MiB message limit)."""
        items: list[T] = []
        while True:
            response = self._unary(rpc, request, timeout)
            items += items_of(response)
            if not response.next_page_token:
                return items
            request.page_token = response.next_page_token

    # ---- tenants ----

    def add_tenant(self, request: pb.AddTenantRequest, *, timeout: float | None = None) -> pb.Tenant:
        return self._unary(self.stub.AddTenant, request, timeout)

    def remove_tenant(self, request: pb.RemoveTenantRequest, *,
                      timeout: float | None = None) -> pb.RemoveTenantResponse:
        return self._unary(self.stub.RemoveTenant, request, timeout)

    def repair_tenant(self, tenant_id: str, *, timeout: float | None = None) -> pb.RepairTenantResponse:
        return self._unary(self.stub.RepairTenant, pb.RepairTenantRequest(id=tenant_id), timeout)

    def purge_tenant(self, tenant_id: str, *, timeout: float | None = None) -> pb.RemoveTenantResponse:
        return self._unary(self.stub.PurgeTenant, pb.PurgeTenantRequest(id=tenant_id), timeout)

    def restore_tenant(self, request: pb.RestoreTenantRequest, *, timeout: float | None = None) -> pb.Tenant:
        return self._unary(self.stub.RestoreTenant, request, timeout)

    def get_tenant(self, tenant_id: str, *, timeout: float | None = None) -> pb.Tenant:
        return self._unary(self.stub.GetTenant, pb.GetTenantRequest(id=tenant_id), timeout)

    def list_tenants(self, *, timeout: float | None = None, page_size: int = 0) -> list[pb.Tenant]:
        return self._pages(self.stub.ListTenants, pb.ListTenantsRequest(page_size=page_size),
                           lambda r: r.tenants, timeout)

    def removed_tenants(self, *, timeout: float | None = None) -> list[pb.RemovedTenant]:
        return self._pages(self.stub.ListRemovedTenants, pb.ListRemovedTenantsRequest(),
                           lambda r: r.tenants, timeout)

    def webhook_secrets(self, tenant_id: str, *, timeout: float | None = None) -> pb.WebhookSecretsResponse:
        return self._unary(self.stub.WebhookSecrets, pb.WebhookSecretsRequest(id=tenant_id), timeout)

    def rotate_webhook_secret(self, request: pb.RotateWebhookSecretRequest, *,
                              timeout: float | None = None) -> pb.WebhookSecretsResponse:
        return self._unary(self.stub.RotateWebhookSecret, request, timeout)

    # ---- services ----

    def status(self, tenant: str = "", *, timeout: float | None = None) -> list[pb.ServiceState]:
        return self._pages(self.stub.Status, pb.StatusRequest(tenant=tenant), lambda r: r.services, timeout)

    def health(self, tenant: str = "", *, timeout: float | None = None) -> list[pb.ServiceHealth]:
        return self._pages(self.stub.Health, pb.HealthRequest(tenant=tenant), lambda r: r.services, timeout)

    def metrics(self, tenant: str = "", *, timeout: float | None = None) -> list[pb.ServiceMetrics]:
        return self._pages(self.stub.Metrics, pb.MetricsRequest(tenant=tenant), lambda r: r.services, timeout)

    def start(self, request: pb.ServiceRequest, *, timeout: float | None = None) -> pb.StatusResponse:
        return self._unary(self.stub.Start, request, timeout)

    def stop(self, request: pb.ServiceRequest, *, timeout: float | None = None) -> pb.StatusResponse:
        return self._unary(self.stub.Stop, request, timeout)

    def restart(self, request: pb.ServiceRequest, *, timeout: float | None = None) -> pb.StatusResponse:
        return self._unary(self.stub.Restart, request, timeout)

    def reload(self, *, timeout: float | None = None) -> pb.ReloadResponse:
        return self._unary(self.stub.Reload, pb.ReloadRequest(), timeout)

    def service_call(self, request: pb.ServiceCallRequest, *,
                     timeout: float | None = None) -> pb.ServiceCallResponse:
        return self._unary(self.stub.ServiceCall, request, timeout)

    # ---- releases ----

    def deploy(self, request: pb.DeployRequest) -> Iterator[pb.DeployProgress]:
        return self._stream(self.stub.Deploy, request)

    def rollback(self, request: pb.RollbackRequest) -> Iterator[pb.DeployProgress]:
        return self._stream(self.stub.Rollback, request)

    def history(self, tenant: str, *, timeout: float | None = None) -> list[pb.HistoryEntry]:
        return self._pages(self.stub.History, pb.HistoryRequest(tenant=tenant), lambda r: r.entries, timeout)

    def list_releases(self, *, timeout: float | None = None) -> pb.ListReleasesResponse:
        return self._unary(self.stub.ListReleases, pb.ListReleasesRequest(), timeout)

    def install_release(self, request: pb.InstallReleaseRequest, *,
                        timeout: float | None = None) -> pb.Release:
        return self._unary(self.stub.InstallRelease, request, timeout)

    def remove_release(self, version: str, *, timeout: float | None = None) -> pb.RemoveReleaseResponse:
        return self._unary(self.stub.RemoveRelease, pb.RemoveReleaseRequest(version=version), timeout)

    # ---- streams ----

    def tail_logs(self, request: pb.TailLogsRequest) -> Iterator[pb.LogLines]:
        return self._stream(self.stub.TailLogs, request)

    def watch_events(self, request: pb.WatchEventsRequest) -> Iterator[pb.Event]:
        return self._stream(self.stub.WatchEvents, request)

