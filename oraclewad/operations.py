"""What an operator can ask of the daemon: the interface the control plane serves.

The daemon implements `Operations`; the gRPC servicer is a thin adapter over it, so the
control plane never reaches into supervisor or provisioning internals. Methods raise the
errors in oraclewad.errors (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
Unavailable), whose messages are written for the operator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ServiceView:
    tenant: str
    service: str            # "recovery" | "broadcast" (or a program name for group "programs")
    state: str              # a supervisor.status.State: starting | running | unhealthy | backoff |
                            # degraded | stopping | stopped | unavailable | pending | invalid
    pid: int | None
    uptime_s: float | None
    restarts: int
    ready: bool
    port: int | None
    release: str
    message: str = ""       # last exit, provisioning UNAVAILABLE reason, ...


@dataclass(frozen=True)
class TenantView:
    id: str
    name: str
    services: tuple[str, ...]
    release: str
    ports: Mapping[str, int]
    webhook_url: str
    secrets_file: str
    source_file: str
    provisioned: bool
    problems: tuple[str, ...] = ()
    states: tuple[ServiceView, ...] = ()


@dataclass(frozen=True)
class RemovedView:
    """A removed tenant whose data was kept (`tenant remove` without --purge)."""

    id: str
    removed_at: float | None            # unix time of its last removal (None: its file is gone)
    size_bytes: int                     # databases and logs
    kept: tuple[str, ...]               # one line per thing kept, e.g. "database imperio_recovery 7.6 MiB"


@dataclass(frozen=True)
class HealthView:
    tenant: str
    service: str
    status: str             # ok | degraded | failing | unavailable | stopped
    checks: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class ReloadView:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()      # invalid tenant files, reported and skipped

    def describe(self) -> str:
        """`added lojaABC; removed -; restarted imperio/broadcast` (events, the daemon log)."""
        return "; ".join(f"{label} {', '.join(items) or '-'}" for label, items in (
            ("added", self.added), ("removed", self.removed), ("restarted", self.restarted)))


@dataclass(frozen=True)
class MetricsView:
    """Key figures of one service, read at call time (what /metrics and `oraclectl metrics` show)."""

    tenant: str
    service: str
    # restarts, ready, uptime_s, start_seconds, last_exit_code, rss_bytes, pss_bytes, cpu_seconds,
    # log_bytes; from the child's own metrics: outbox_depth, messages_sent, uncertain, ...;
    # scrape_seconds, scrape_timeouts, scrape_errors (each only when known)
    figures: Mapping[str, float]
    state: str = ""
    release: str = ""
    restart_reasons: Mapping[str, int] = field(default_factory=dict)
    scrape: str = ""                    # reading the child's metrics: ok, timeout, error, "" (not read)
    families: Sequence[Any] = ()        # the child's own metric families (oraclewad.scrape.Family)


@dataclass(frozen=True)
class DaemonFigures:
    """Fleet-wide figures for /metrics."""

    tenants: Mapping[str, int]          # tenants by state: ok, degraded, stopped, provisioning, invalid
    config_problems: int
    provisioning_failures: int          # failed or unavailable provisioning attempts since start
    log_disk_free_bytes: float | None = None    # the filesystem of log_dir (for a "disk filling" alert)
    log_disk_size_bytes: float | None = None
    # tenant -> (keys, bytes) in the shared Redis, from the last sample ([metrics] usage_interval)
    redis_usage: Mapping[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceCallView:
    status: int             # the service's HTTP status
    body_json: str          # its answer, untouched (the daemon never parses business data)


@dataclass(frozen=True)
class WebhookSecretsView:
    """A tenant's shop-webhook credentials, for `oraclectl tenant secrets` (secrets: never logged)."""

    tenant: str
    webhook_url: str                    # "" when the tenant has no recovery service
    secret: str = field(repr=False)     # signs X-Webhook-Signature and Standard Webhooks
    static_token: str = field(repr=False)
    static_token_enabled: bool
    previous_until: tuple[float, ...]   # older secrets still accepted until these unix times
    file: str


@dataclass(frozen=True)
class EventView:
    ts: float               # unix time
    tenant: str
    service: str
    kind: str               # state | tenant_added | tenant_removed | reload | provision
    state: str = ""
    message: str = ""


@dataclass(frozen=True)
class NewTenant:
    """What `oraclectl tenant add` / `import-env` send; the daemon validates it like a file."""

    id: str
    name: str = ""
    services: tuple[str, ...] = ("recovery", "broadcast")
    release: str = ""
    evolution_url: str = ""
    evolution_api_key: str = ""          # a secret: stored 0600 under state_dir, never in tenants.d
    recovery_instances: tuple[str, ...] = ()    # [recovery] instances
    broadcast_instances: tuple[str, ...] = ()   # [broadcast] instances (disjoint from recovery's)
    extra: Mapping[str, Any] = field(default_factory=dict)   # further tenant-file tables (antiban, ...)


@dataclass(frozen=True)
class ReleaseView:
    version: str
    python: str
    schema: Mapping[str, int]           # highest migration per service it ships
    tenants: tuple[str, ...]            # tenants on it now
    path: str = ""                      # its directory ("" for bundled)


@dataclass(frozen=True)
class SwapOptions:
    """Per-request overrides of [releases] healthy_deadline / min_healthy_time (None: the config's)."""

    healthy_deadline: float | None = None
    min_healthy_time: float | None = None


@dataclass(frozen=True)
class ProgressView:
    """One line of a swap's progress (streamed while `deploy`/`rollback` run)."""

    tenant: str
    service: str
    phase: str          # plan | schema | migrating | starting | ready | healthy | unhealthy | promoted |
                        # reverted | done | failed | skipped | halted
    elapsed_s: float = 0.0
    health: str = ""
    message: str = ""
    from_version: str = ""
    to_version: str = ""


@dataclass(frozen=True)
class DeployView:
    tenant: str                         # "" for a fleet rollout
    from_version: str
    to_version: str
    message: str = ""


@dataclass(frozen=True)
class HistoryView:
    ts: float
    service: str
    from_version: str
    to_version: str
    result: str                         # ok | reverted | refused
    reason: str
    duration_s: float
    stable: bool
    action: str                         # deploy | rollback


class Operations(Protocol):
    async def add_tenant(self, new: NewTenant, *, wait: bool, timeout: float) -> TenantView: ...

    async def remove_tenant(self, tenant_id: str, *, purge: bool) -> list[str]: ...

    async def repair_tenant(self, tenant_id: str) -> list[str]:
        """Provision the tenant again (credentials re-asserted) and retry its failing services."""
        ...

    def list_tenants(self) -> list[TenantView]: ...

    async def removed_tenants(self) -> list[RemovedView]: ...

    async def purge_tenant(self, tenant_id: str) -> list[str]:
        """Delete everything a removed tenant left: databases, Redis keys, secrets, ports, logs."""
        ...

    async def restore_tenant(self, tenant_id: str, *, wait: bool, timeout: float) -> TenantView:
        """Bring a removed tenant back with its file, data and ports."""
        ...

    def get_tenant(self, tenant_id: str) -> TenantView: ...

    def status(self, tenant_id: str | None = None) -> list[ServiceView]: ...

    async def health(self, tenant_id: str | None = None) -> list[HealthView]: ...

    async def start(self, tenant_id: str, service: str | None = None) -> list[ServiceView]: ...

    async def stop(self, tenant_id: str, service: str | None = None) -> list[ServiceView]: ...

    async def restart(self, tenant_id: str, service: str | None = None) -> list[ServiceView]: ...

    async def reload(self) -> ReloadView: ...

    async def metrics(self, tenant_id: str | None = None) -> list[MetricsView]: ...

    def daemon_figures(self) -> DaemonFigures: ...

    def admin_socket(self, tenant_id: str, service: str) -> str:
        """Path of a service's admin unix socket (/healthz and its own /metrics)."""
        ...

    def metrics_token(self, tenant_id: str) -> str | None:
        """The bearer token that guards /tenants/ID/metrics, or None when the tenant set none;
        NotFound for an unknown tenant."""
        ...

    async def service_call(self, tenant_id: str, service: str, method: str, path: str, body_json: str,
                           timeout: float) -> ServiceCallView:
        """Forward one request to a running service's admin API (its unix socket)."""
        ...

    def webhook_secrets(self, tenant_id: str) -> WebhookSecretsView: ...

    async def rotate_webhook_secret(self, tenant_id: str, overlap_s: float) -> WebhookSecretsView:
        """A new secret and token (the old ones valid for overlap_s more); recovery restarts with them."""
        ...

    def log_file(self, tenant_id: str, service: str, channel: str) -> str:
        """Path of a log file (channel: combined, error, webhook, ...); NotFound if unknown."""
        ...

    def watch_log(self, tenant_id: str, service: str, channel: str,
                  on_new_file: Callable[[], None]) -> Callable[[], None]:
        """Call `on_new_file` (on the daemon's thread, right after creation) whenever rotation
        starts a new file for that log; returns the function that stops it."""
        ...

    def watch_events(self) -> AsyncIterator[EventView]:
        """A bounded subscription; a consumer that falls behind is dropped, never blocks."""
        ...

    def releases(self) -> Sequence[ReleaseView]: ...

    async def install_release(self, path: str, version: str, *, find_links: Sequence[str],
                              share_packages: bool) -> ReleaseView: ...

    async def remove_release(self, version: str) -> str: ...

    async def deploy(self, tenant_id: str, version: str, *, rollback: bool, options: SwapOptions,
                     report: Callable[[ProgressView], object]) -> DeployView:
        """Health-gated swap of every service of a tenant; FailedPrecondition (with the reason)
        after an auto-revert. version "" with rollback: the last stable release before the current."""
        ...

    async def deploy_all(self, version: str, *, canary: int, max_parallel: int, dry_run: bool,
                         options: SwapOptions, report: Callable[[ProgressView], object]) -> DeployView: ...

    def history(self, tenant_id: str) -> list[HistoryView]: ...
