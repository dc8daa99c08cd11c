"""oraclewad.toml -> frozen dataclasses, with every problem reported at once."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from oraclewad import contract
from oraclewad.errors import InvalidArgument, Problem
from oraclewad.tomlcheck import TableReader, load_toml, non_negative, port_number, positive

DEFAULT_CONFIG_PATHS = (Path("oraclewad.toml"), Path("/etc/oraclewa/oraclewad.toml"))
DEFAULT_UID_RANGE = (61000, 62999)
T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """Supervision policy for one service (see ARCHITECTURE.md, "Supervision policy")."""

    backoff_initial: float = 0.1
    backoff_max: float = 60.0
    backoff_jitter: float = 0.2
    backoff_reset_after: float = 60.0
    # A process READY this long before its first failure (of a streak) is restarted at once, like
    # supervisord's startsecs and PM2's min_uptime; backoff is for crash loops.
    min_uptime: float = 1.0
    breaker_restarts: int = 5
    breaker_window: float = 600.0
    start_timeout: float = 30.0
    watchdog_timeout: float = 30.0
    stop_grace: float = 10.0
    # "fork": forked from a warm template of the release (oraclewad/supervisor/forking.py);
    # "exec": a fresh interpreter. Fork falls back to exec when the template cannot start.
    spawn: str = "fork"

    def overridden(self, reader: TableReader) -> Policy:
        """This policy with any keys the table sets (the caller reports unknown keys)."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "spawn":
                mode = reader.get("spawn", str, check=_spawn_mode)
                if mode is not None:
                    changes["spawn"] = mode
                continue
            kind = int if f.name == "breaker_restarts" else float
            check = (non_negative if f.name in ("backoff_jitter", "watchdog_timeout", "min_uptime")
                     else positive)
            value = reader.get(f.name, kind, check=check)
            if value is not None:
                changes[f.name] = value
        result = replace(self, **changes)
        if result.backoff_jitter >= 1:
            reader.fail("backoff_jitter", "must be below 1 (0.2 means +-20 %)")
        if result.backoff_max < result.backoff_initial:
            reader.fail("backoff_max", "must be at least backoff_initial")
        return result


SPAWN_MODES = ("fork", "exec")


def _spawn_mode(value: str) -> str | None:
    return None if value in SPAWN_MODES else 'must be "fork" or "exec"'


@dataclass(frozen=True)
class LogSettings:
    max_bytes: int = 50 * 1024 * 1024
    backups: int = 10


@dataclass(frozen=True)
class PostgresSettings:
    """dsn None means: run the embedded server under state_dir."""

    dsn: str | None = None
    connection_limit: int = 0           # per tenant role; 0: a share of max_connections


@dataclass(frozen=True)
class RedisSettings:
    """url None means: run the embedded server under state_dir. rediss:// turns on TLS."""

    url: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    maxmemory: str = "256mb"            # embedded server only (redis.conf size, "0" = no limit)


@dataclass(frozen=True)
class ControlSettings:
    socket: Path
    token_file: Path
    tcp: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class ReleaseSettings:
    """How a swap gates the new process (ARCHITECTURE.md, "Releases")."""

    healthy_deadline: float = 60.0      # READY=1 within this, or the swap is reverted
    min_healthy_time: float = 10.0      # then passing health this long before the old one stops


@dataclass(frozen=True)
class ProgramSettings:
    """A host program run under the same supervision policy as tenant services."""

    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    port: int | None = None
    notify: bool = False
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True)
class Settings:
    path: Path
    tenants_dir: Path
    state_dir: Path
    log_dir: Path
    run_dir: Path
    releases_dir: Path
    bind_host: str
    public_url: str
    port_range: tuple[int, int]
    metrics_listen: str | None
    default_release: str
    policy: Policy
    logs: LogSettings
    postgres: PostgresSettings
    redis: RedisSettings
    control: ControlSettings
    programs: tuple[ProgramSettings, ...] = ()
    max_parallel_starts: int = 0        # services between spawn and READY=1 at once; 0 = 4 per core
    tenant_symlinks: bool = False       # follow a symlink in tenants.d to a regular file
    metrics_child_timeout: float = 1.0  # per child, when /metrics reads the children's own metrics
    releases: ReleaseSettings = field(default_factory=ReleaseSettings)
    uid_range: tuple[int, int] | None = DEFAULT_UID_RANGE   # None: tenants run as the daemon's user
    usage_interval: float = 30.0        # seconds between samples of each tenant's Redis use; 0 = off

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def shared_dir(self) -> Path:
        """The one folder tenant users may cross (0711, never list): their private temp folders
        and the embedded servers' sockets. Under the temp dir, which systemd's PrivateTmp= keeps
        to this unit; named after state_dir so daemons side by side do not meet."""
        digest = hashlib.sha256(os.fsencode(self.state_dir.resolve())).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"oraclewa-{digest}"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, then $OWA_CONFIG, then ./oraclewad.toml, then /etc/oraclewa/oraclewad.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(contract.ENV_CONFIG):
        return Path(os.environ[contract.ENV_CONFIG])
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[0]


def _address(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, for example 127.0.0.1:9464"
    return None


def _memory_size(value: str) -> str | None:
    if re.fullmatch(r"\d+\s*(b|kb|mb|gb|k|m|g)?", value.strip().lower()):
        return None
    return 'must be a size like "256mb" or "1gb" ("0": no limit)'


_DEFAULTS = {f.name: f.default for f in fields(Settings)}      # the defaults are declared once, above
_PORT_RANGE = [4100, 4999]


def load_settings(path: Path) -> Settings:
    """Parse and validate the daemon config; raises InvalidArgument listing every problem."""
    problems: list[Problem] = []
    doc = load_toml(path, problems)
    if doc is None:
        raise InvalidArgument(problems)
    path = path.resolve()
    root = TableReader(doc, str(path), "", problems)
    resolve = _resolver(path.parent)
    daemon = _within(root, "daemon", lambda t: _daemon(t, resolve))
    services = _within(root, "services", _services)
    policy = _within(root, "policy", Policy().overridden)
    logs = _within(root, "logs", _logs)
    postgres = _within(root, "postgres", _postgres)
    redis = _within(root, "redis", lambda t: _redis(t, resolve))
    control = _within(root, "control", lambda t: _control(t, resolve, daemon["run_dir"], daemon["state_dir"]))
    releases = _within(root, "releases", _releases)
    metrics = _within(root, "metrics", _metrics)
    programs = _programs(root.sub("programs"), resolve, path.parent, policy)
    root.finish()
    if problems:
        raise InvalidArgument(problems)
    return Settings(path=path, **daemon, **services, **metrics, policy=policy, logs=logs,
                    postgres=postgres, redis=redis, control=control, programs=programs, releases=releases)


def _resolver(base: Path) -> Callable[[str | None], Path | None]:
    def resolve(value: str | None) -> Path | None:
        return None if value is None else (base / Path(value).expanduser())
    return resolve


def _within(root: TableReader, name: str, read: Callable[[TableReader], T]) -> T:
    """read(the [name] table), then report its unknown keys."""
    table = root.sub(name)
    value = read(table)
    table.finish()
    return value


def _daemon(d: TableReader, resolve: Callable[[str | None], Path | None]) -> dict[str, Any]:
    return {
        "tenants_dir": resolve(d.get("tenants_dir", str, "tenants.d")),
        "state_dir": resolve(d.get("state_dir", str, "var/state")),
        "log_dir": resolve(d.get("log_dir", str, "var/log")),
        "run_dir": resolve(d.get("run_dir", str, "var/run")),
        "releases_dir": resolve(d.get("releases_dir", str, "var/releases")),
        "default_release": d.get("default_release", str, "bundled"),
        "max_parallel_starts": d.get("max_parallel_starts", int, _DEFAULTS["max_parallel_starts"],
                                     check=non_negative),
        "tenant_symlinks": d.get("tenant_symlinks", bool, _DEFAULTS["tenant_symlinks"]),
    }


def _services(s: TableReader) -> dict[str, Any]:
    bind_host = s.get("bind_host", str, "127.0.0.1")
    public_url = s.get("public_url", str, "") or f"http://{bind_host}"
    port_range = s.get("port_range", list, _PORT_RANGE)
    uid_range = s.get("uid_range", list, list(DEFAULT_UID_RANGE))
    if uid_range and (len(uid_range) != 2 or not all(_is_int(u) for u in uid_range)
                      or not 1000 <= uid_range[0] <= uid_range[1] < 2**31 - 1):
        s.fail("uid_range", "must be [FIRST, LAST], uids with 1000 <= FIRST <= LAST, e.g. "
                            "[61000, 62999], or [] to run tenants as the daemon's user")
        uid_range = list(DEFAULT_UID_RANGE)
    if (len(port_range) != 2 or not all(_is_int(p) for p in port_range)
            or port_number(port_range[0]) or port_number(port_range[1])
            or port_range[0] > port_range[1]):
        s.fail("port_range", "must be [FIRST, LAST], two ports with FIRST <= LAST, e.g. [4100, 4999]")
        port_range = _PORT_RANGE
    return {"bind_host": bind_host, "public_url": public_url, "port_range": (port_range[0], port_range[1]),
            "uid_range": (uid_range[0], uid_range[1]) if uid_range else None}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _logs(lg: TableReader) -> LogSettings:
    default = LogSettings()
    return LogSettings(max_bytes=lg.get("max_bytes", int, default.max_bytes, check=positive),
                       backups=lg.get("backups", int, default.backups, check=non_negative))


def _postgres(pg: TableReader) -> PostgresSettings:
    limit = pg.get("connection_limit", int, PostgresSettings.connection_limit, check=non_negative)
    return PostgresSettings(dsn=pg.get("dsn", str) or None, connection_limit=limit)


def _redis(rd: TableReader, resolve: Callable[[str | None], Path | None]) -> RedisSettings:
    return RedisSettings(url=rd.get("url", str) or None,
                         ca_file=resolve(rd.get("ca_file", str)),
                         cert_file=resolve(rd.get("cert_file", str)),
                         key_file=resolve(rd.get("key_file", str)),
                         maxmemory=rd.get("maxmemory", str, RedisSettings.maxmemory, check=_memory_size))


def _control(c: TableReader, resolve: Callable[[str | None], Path | None], run_dir: Path,
             state_dir: Path) -> ControlSettings:
    control = ControlSettings(
        socket=resolve(c.get("socket", str)) or run_dir / "oraclewad.sock",
        token_file=resolve(c.get("token_file", str)) or state_dir / "secrets" / "control.token",
        tcp=c.get("tcp", str, check=_address),
        tls_cert=resolve(c.get("tls_cert", str)),
        tls_key=resolve(c.get("tls_key", str)),
    )
    if (control.tls_cert is None) != (control.tls_key is None):
        c.fail("tls_cert", "set both tls_cert and tls_key, or neither")
    return control


def _releases(r: TableReader) -> ReleaseSettings:
    default = ReleaseSettings()
    return ReleaseSettings(
        healthy_deadline=r.get("healthy_deadline", float, default.healthy_deadline, check=positive),
        min_healthy_time=r.get("min_healthy_time", float, default.min_healthy_time, check=non_negative))


def _metrics(m: TableReader) -> dict[str, Any]:
    listen = m.get("listen", str, "127.0.0.1:9464", check=lambda v: None if v == "" else _address(v))
    child_timeout = m.get("child_timeout", float, _DEFAULTS["metrics_child_timeout"],
                          check=lambda v: None if 0 < v <= 30 else "must be between 0 and 30 seconds")
    usage_interval = m.get("usage_interval", (int, float), _DEFAULTS["usage_interval"], check=non_negative)
    return {"metrics_listen": listen or None, "metrics_child_timeout": child_timeout,
            "usage_interval": float(usage_interval)}


def _programs(progs: TableReader, resolve: Callable[[str | None], Path | None], base: Path,
              policy: Policy) -> tuple[ProgramSettings, ...]:
    programs = []
    for name in list(progs.table):
        p = progs.sub(name)
        command = p.get("command", (list, str))
        if isinstance(command, str):
            command = shlex.split(command)
        if not command or not all(isinstance(a, str) for a in command):
            p.fail("command", 'must be a non-empty list of strings, e.g. ["python", "-m", "x"]')
            command = ["false"]
        env = p.get("env", dict, {})
        if not all(isinstance(v, str) for v in env.values()):
            p.fail("env", "values must be strings")
            env = {}
        port = p.get("port", int, check=port_number)
        notify = p.get("notify", bool, False)
        cwd = resolve(p.get("cwd", str)) or base
        prog_policy = _within(p, "policy", policy.overridden)
        p.finish()
        programs.append(ProgramSettings(name=name, command=tuple(command),
                                        env=tuple(sorted(env.items())), cwd=cwd, port=port,
                                        notify=notify, policy=prog_policy))
    progs.seen.update(progs.table)
    progs.finish()
    return tuple(programs)
