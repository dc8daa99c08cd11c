from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Service(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE_UNSPECIFIED: _ClassVar[Service]
    SERVICE_RECOVERY: _ClassVar[Service]
    SERVICE_BROADCAST: _ClassVar[Service]

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    STATE_STARTING: _ClassVar[State]
    STATE_RUNNING: _ClassVar[State]
    STATE_UNHEALTHY: _ClassVar[State]
    STATE_BACKOFF: _ClassVar[State]
    STATE_DEGRADED: _ClassVar[State]
    STATE_STOPPING: _ClassVar[State]
    STATE_STOPPED: _ClassVar[State]
    STATE_UNAVAILABLE: _ClassVar[State]
    STATE_PENDING: _ClassVar[State]
    STATE_INVALID: _ClassVar[State]
SERVICE_UNSPECIFIED: Service
SERVICE_RECOVERY: Service
SERVICE_BROADCAST: Service
STATE_UNSPECIFIED: State
STATE_STARTING: State
STATE_RUNNING: State
STATE_UNHEALTHY: State
STATE_BACKOFF: State
STATE_DEGRADED: State
STATE_STOPPING: State
STATE_STOPPED: State
STATE_UNAVAILABLE: State
STATE_PENDING: State
STATE_INVALID: State

class ServiceState(_message.Message):
    __slots__ = ("tenant", "service", "service_enum", "state", "state_enum", "pid", "uptime_s", "restarts", "ready", "port", "release", "message")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ENUM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_ENUM_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    service_enum: Service
    state: str
    state_enum: State
    pid: int
    uptime_s: float
    restarts: int
    ready: bool
    port: int
    release: str
    message: str
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ..., service_enum: _Optional[_Union[Service, str]] = ..., state: _Optional[str] = ..., state_enum: _Optional[_Union[State, str]] = ..., pid: _Optional[int] = ..., uptime_s: _Optional[float] = ..., restarts: _Optional[int] = ..., ready: _Optional[bool] = ..., port: _Optional[int] = ..., release: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("id", "name", "services", "service_enums", "release", "ports", "webhook_url", "secrets_file", "source_file", "provisioned", "problems", "states")
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ENUMS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FILE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FILE_FIELD_NUMBER: _ClassVar[int]
    PROVISIONED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    services: _containers.RepeatedScalarFieldContainer[str]
    service_enums: _containers.RepeatedScalarFieldContainer[Service]
    release: str
    ports: _containers.ScalarMap[str, int]
    webhook_url: str
    secrets_file: str
    source_file: str
    provisioned: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    states: _containers.RepeatedCompositeFieldContainer[ServiceState]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., service_enums: _Optional[_Iterable[_Union[Service, str]]] = ..., release: _Optional[str] = ..., ports: _Optional[_Mapping[str, int]] = ..., webhook_url: _Optional[str] = ..., secrets_file: _Optional[str] = ..., source_file: _Optional[str] = ..., provisioned: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., states: _Optional[_Iterable[_Union[ServiceState, _Mapping]]] = ...) -> None: ...

class NewTenant(_message.Message):
    __slots__ = ("id", "name", "services", "service_enums", "release", "evolution_url", "evolution_api_key", "recovery_instances", "broadcast_instances", "extra_toml")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ENUMS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    EVOLUTION_URL_FIELD_NUMBER: _ClassVar[int]
    EVOLUTION_API_KEY_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_TOML_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    services: _containers.RepeatedScalarFieldContainer[str]
    service_enums: _containers.RepeatedScalarFieldContainer[Service]
    release: str
    evolution_url: str
    evolution_api_key: str
    recovery_instances: _containers.RepeatedScalarFieldContainer[str]
    broadcast_instances: _containers.RepeatedScalarFieldContainer[str]
    extra_toml: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., service_enums: _Optional[_Iterable[_Union[Service, str]]] = ..., release: _Optional[str] = ..., evolution_url: _Optional[str] = ..., evolution_api_key: _Optional[str] = ..., recovery_instances: _Optional[_Iterable[str]] = ..., broadcast_instances: _Optional[_Iterable[str]] = ..., extra_toml: _Optional[str] = ...) -> None: ...

class AddTenantRequest(_message.Message):
    __slots__ = ("tenant", "wait", "timeout_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    tenant: NewTenant
    wait: bool
    timeout_s: float
    def __init__(self, tenant: _Optional[_Union[NewTenant, _Mapping]] = ..., wait: _Optional[bool] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class RepairTenantRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RepairTenantResponse(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actions: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveTenantRequest(_message.Message):
    __slots__ = ("id", "purge")
    ID_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    purge: bool
    def __init__(self, id: _Optional[str] = ..., purge: _Optional[bool] = ...) -> None: ...

class RemoveTenantResponse(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRemovedTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RemovedTenant(_message.Message):
    __slots__ = ("id", "removed_at", "size_bytes", "kept")
    ID_FIELD_NUMBER: _ClassVar[int]
    REMOVED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    removed_at: float
    size_bytes: int
    kept: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., removed_at: _Optional[float] = ..., size_bytes: _Optional[int] = ..., kept: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRemovedTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[RemovedTenant]
    next_page_token: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[RemovedTenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PurgeTenantRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RestoreTenantRequest(_message.Message):
    __slots__ = ("id", "wait", "timeout_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    wait: bool
    timeout_s: float
    def __init__(self, id: _Optional[str] = ..., wait: _Optional[bool] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    next_page_token: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTenantRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("tenant", "page_size", "page_token")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    page_size: int
    page_token: str
    def __init__(self, tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("services", "next_page_token")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceState]
    next_page_token: str
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceState, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ("tenant", "page_size", "page_token")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    page_size: int
    page_token: str
    def __init__(self, tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ServiceHealth(_message.Message):
    __slots__ = ("tenant", "service", "status", "checks", "detail")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    status: str
    checks: _struct_pb2.Struct
    detail: str
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ..., status: _Optional[str] = ..., checks: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("services", "next_page_token")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceHealth]
    next_page_token: str
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceHealth, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ServiceRequest(_message.Message):
    __slots__ = ("tenant", "service")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("added", "removed", "restarted", "unchanged", "problems")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    RESTARTED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    restarted: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., restarted: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("tenant", "version", "all", "canary", "max_parallel", "dry_run", "healthy_deadline_s", "min_healthy_time_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MIN_HEALTHY_TIME_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    version: str
    all: bool
    canary: int
    max_parallel: int
    dry_run: bool
    healthy_deadline_s: float
    min_healthy_time_s: float
    def __init__(self, tenant: _Optional[str] = ..., version: _Optional[str] = ..., all: _Optional[bool] = ..., canary: _Optional[int] = ..., max_parallel: _Optional[int] = ..., dry_run: _Optional[bool] = ..., healthy_deadline_s: _Optional[float] = ..., min_healthy_time_s: _Optional[float] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("tenant", "version", "healthy_deadline_s", "min_healthy_time_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MIN_HEALTHY_TIME_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    version: str
    healthy_deadline_s: float
    min_healthy_time_s: float
    def __init__(self, tenant: _Optional[str] = ..., version: _Optional[str] = ..., healthy_deadline_s: _Optional[float] = ..., min_healthy_time_s: _Optional[float] = ...) -> None: ...

class DeployProgress(_message.Message):
    __slots__ = ("tenant", "service", "phase", "elapsed_s", "health", "message", "from_version", "to_version")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    phase: str
    elapsed_s: float
    health: str
    message: str
    from_version: str
    to_version: str
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ..., phase: _Optional[str] = ..., elapsed_s: _Optional[float] = ..., health: _Optional[str] = ..., message: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("tenant", "page_size", "page_token")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    page_size: int
    page_token: str
    def __init__(self, tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("ts", "action", "from_version", "to_version", "result", "service", "reason", "duration_s", "stable")
    TS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    ts: float
    action: str
    from_version: str
    to_version: str
    result: str
    service: str
    reason: str
    duration_s: float
    stable: bool
    def __init__(self, ts: _Optional[float] = ..., action: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ..., result: _Optional[str] = ..., service: _Optional[str] = ..., reason: _Optional[str] = ..., duration_s: _Optional[float] = ..., stable: _Optional[bool] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListReleasesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Release(_message.Message):
    __slots__ = ("version", "python", "schema", "tenants", "path")
    class SchemaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    version: str
    python: str
    schema: _containers.ScalarMap[str, int]
    tenants: _containers.RepeatedScalarFieldContainer[str]
    path: str
    def __init__(self, version: _Optional[str] = ..., python: _Optional[str] = ..., schema: _Optional[_Mapping[str, int]] = ..., tenants: _Optional[_Iterable[str]] = ..., path: _Optional[str] = ...) -> None: ...

class InstallReleaseRequest(_message.Message):
    __slots__ = ("path", "version", "find_links", "share_packages")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FIND_LINKS_FIELD_NUMBER: _ClassVar[int]
    SHARE_PACKAGES_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: str
    find_links: _containers.RepeatedScalarFieldContainer[str]
    share_packages: bool
    def __init__(self, path: _Optional[str] = ..., version: _Optional[str] = ..., find_links: _Optional[_Iterable[str]] = ..., share_packages: _Optional[bool] = ...) -> None: ...

class RemoveReleaseRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class RemoveReleaseResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class ListReleasesResponse(_message.Message):
    __slots__ = ("releases",)
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[Release]
    def __init__(self, releases: _Optional[_Iterable[_Union[Release, _Mapping]]] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("tenant", "page_size", "page_token")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    page_size: int
    page_token: str
    def __init__(self, tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ServiceMetrics(_message.Message):
    __slots__ = ("tenant", "service", "figures")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    figures: _containers.ScalarMap[str, float]
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ..., figures: _Optional[_Mapping[str, float]] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("services", "next_page_token")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceMetrics]
    next_page_token: str
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceMetrics, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TailLogsRequest(_message.Message):
    __slots__ = ("tenant", "service", "channel", "lines", "follow", "level", "since")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    channel: str
    lines: int
    follow: bool
    level: str
    since: float
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ..., channel: _Optional[str] = ..., lines: _Optional[int] = ..., follow: _Optional[bool] = ..., level: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class LogLines(_message.Message):
    __slots__ = ("service", "lines", "tenant")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    service: str
    lines: _containers.RepeatedScalarFieldContainer[str]
    tenant: str
    def __init__(self, service: _Optional[str] = ..., lines: _Optional[_Iterable[str]] = ..., tenant: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("tenant", "recent", "follow")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    recent: int
    follow: bool
    def __init__(self, tenant: _Optional[str] = ..., recent: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("ts", "tenant", "service", "kind", "state", "state_enum", "message")
    TS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_ENUM_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ts: float
    tenant: str
    service: str
    kind: str
    state: str
    state_enum: State
    message: str
    def __init__(self, ts: _Optional[float] = ..., tenant: _Optional[str] = ..., service: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., state_enum: _Optional[_Union[State, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ServiceCallRequest(_message.Message):
    __slots__ = ("tenant", "service", "service_enum", "method", "path", "body_json", "timeout_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ENUM_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service: str
    service_enum: Service
    method: str
    path: str
    body_json: str
    timeout_s: float
    def __init__(self, tenant: _Optional[str] = ..., service: _Optional[str] = ..., service_enum: _Optional[_Union[Service, str]] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., body_json: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ServiceCallResponse(_message.Message):
    __slots__ = ("status", "body_json")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    status: int
    body_json: str
    def __init__(self, status: _Optional[int] = ..., body_json: _Optional[str] = ...) -> None: ...

class WebhookSecretsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("id", "overlap_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    overlap_s: float
    def __init__(self, id: _Optional[str] = ..., overlap_s: _Optional[float] = ...) -> None: ...

class WebhookSecretsResponse(_message.Message):
    __slots__ = ("id", "webhook_url", "secret", "static_token", "static_token_enabled", "previous_until", "file")
    ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    STATIC_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATIC_TOKEN_ENABLED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_UNTIL_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    id: str
    webhook_url: str
    secret: str
    static_token: str
    static_token_enabled: bool
    previous_until: _containers.RepeatedScalarFieldContainer[float]
    file: str
    def __init__(self, id: _Optional[str] = ..., webhook_url: _Optional[str] = ..., secret: _Optional[str] = ..., static_token: _Optional[str] = ..., static_token_enabled: _Optional[bool] = ..., previous_until: _Optional[_Iterable[float]] = ..., file: _Optional[str] = ...) -> None: ...
