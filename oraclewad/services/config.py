"""The child's JSON config (OWA_CONFIG): parse, validate, and report every problem on one line.

Unknown keys are accepted (and logged by the runtime) rather than refused: a newer daemon may
write keys an older release does not know yet, and a rollback must still start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oraclewad import contract
from oraclewad.services.logs import LEVELS

EX_CONFIG = contract.EX_CONFIG
KNOWN_KEYS = frozenset({
    "tenant", "service", "display_name", "release", "log_level", "http", "postgres", "redis",
    "webhook_secret", "evolution", "instances", "antiban", "templates",
    "webhook_secrets", "webhook_token", "webhook_tokens_previous", "recovery", "shared", "broadcast",
})
_FIX = "fix the tenant's entry in tenants.d and reload (or the JSON file when running standalone)"


class ConfigError(Exception):
    """The config cannot be used; str() is one line naming the key(s) and the fix."""

    exit_code = EX_CONFIG


@dataclass(frozen=True)
class PostgresConfig:
    dsn: str
    pool_min: int = 0
    pool_max: int = 4


@dataclass(frozen=True)
class RedisConfig:
    url: str
    username: str | None
    password: str | None
    prefix: str


@dataclass(frozen=True)
class EvolutionSettings:
    url: str
    api_key: str = field(repr=False)
    api_version: int = 2
    webhook_url: str = ""
    webhook_jwt_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class ServiceConfig:
    path: str
    tenant: str
    service: str
    display_name: str
    release: str
    log_level: str
    http_host: str
    http_port: int | None
    graceful_timeout: float
    postgres: PostgresConfig | None
    redis: RedisConfig | None
    raw: Mapping[str, Any]
    evolution: EvolutionSettings | None = None   # None: no [evolution] url, nothing to send through
    instances: tuple[str, ...] = ()              # this service's own Evolution instances

    @property
    def unknown_keys(self) -> list[str]:
        return sorted(set(self.raw) - KNOWN_KEYS)


class _Reader:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def get(self, table: Mapping[str, Any], prefix: str, name: str, kind: type | tuple[type, ...],
            default: Any = None, required: bool = False) -> Any:
        key = f"{prefix}.{name}" if prefix else name
        if name not in table or table[name] is None:
            if required:
                self.fail(key, "is required")
            return default
        value = table[name]
        # bool is an int subclass: true must not pass as a port number.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            self.fail(key, f"must be {_type_name(kind)}, not {type(value).__name__}")
            return default
        return value

    def table(self, raw: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
        value = raw.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(name, f"must be an object, not {type(value).__name__}")
            return None
        return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
             list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load(service: str, env: Mapping[str, str] | None = None, *, need_port: bool = True) -> ServiceConfig:
    """Read the config from OWA_CONFIG_FD (supervised) or the file OWA_CONFIG (standalone) for
    `service`; OWA_TENANT/OWA_SERVICE, when set, must agree with it.

    need_port: no socket is inherited, so http.port must say where to listen (standalone mode).
    """
    env = os.environ if env is None else env
    if env.get(contract.ENV_CONFIG_FD):
        path, text = _read_fd(env[contract.ENV_CONFIG_FD])
    else:
        path = env.get(contract.ENV_CONFIG, "")
        if not path:
            raise ConfigError("OWA_CONFIG: not set; point it at the service's JSON config file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"OWA_CONFIG: cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config {path}: not valid JSON (line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: must be a JSON object, not {type(raw).__name__}")
    return parse(raw, service, env, path=path, need_port=need_port)


def _read_fd(value: str) -> tuple[str, str]:
    try:
        fd = int(value)
    except ValueError:
        raise ConfigError(f"OWA_CONFIG_FD: {value!r} is not a file descriptor number") from None
    try:
        with os.fdopen(fd, "rb") as f:     # read once, then closed: nothing to inherit further
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"OWA_CONFIG_FD: cannot read fd {fd}: {exc.strerror or exc}") from None
    try:
        return f"fd {fd}", data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"OWA_CONFIG_FD: fd {fd} is not UTF-8 text") from None


# One check per key, in the order the docs list them; growing with each new key.
def parse(raw: Mapping[str, Any], service: str, env: Mapping[str, str], *, path: str = "<config>",  # noqa: C901
          need_port: bool = True) -> ServiceConfig:
    r = _Reader()
    tenant = r.get(raw, "", "tenant", str, required="OWA_TENANT" not in env) or env.get("OWA_TENANT", "")
    if "tenant" in raw and not tenant:
        r.fail("tenant", "must not be empty")
    if env.get("OWA_TENANT") and tenant and env["OWA_TENANT"] != tenant:
        r.fail("tenant", f"is {tenant!r} but OWA_TENANT is {env['OWA_TENANT']!r}; they must agree")
    named = r.get(raw, "", "service", str, default=service)
    if named != service:
        r.fail("service", f"is {named!r} but this program is the {service!r} service")
    if env.get("OWA_SERVICE") and env["OWA_SERVICE"] != service:
        r.fail("OWA_SERVICE", f"is {env['OWA_SERVICE']!r} but this program is the {service!r} service")

    log_level = r.get(raw, "", "log_level", str, default="info").lower()
    if log_level not in LEVELS:
        r.fail("log_level", f"must be one of {', '.join(LEVELS)}")
        log_level = "info"

    http = r.table(raw, "http") or {}
    host = r.get(http, "http", "host", str, default="127.0.0.1")
    port = r.get(http, "http", "port", int, required=need_port)
    if port is not None and not 0 <= port <= 65535:
        r.fail("http.port", "must be between 0 and 65535")
    graceful = r.get(http, "http", "graceful_timeout_s", (int, float), default=8.0)
    if graceful < 0:
        r.fail("http.graceful_timeout_s", "must not be negative")

    postgres = None
    if (pg := r.table(raw, "postgres")) is not None:
        dsn = r.get(pg, "postgres", "dsn", str, required=True)
        pool_min = r.get(pg, "postgres", "pool_min", int, default=0)
        pool_max = r.get(pg, "postgres", "pool_max", int, default=4)
        if pool_max < 1 or pool_min < 0 or pool_min > pool_max:
            r.fail("postgres.pool_min", "needs 0 <= pool_min <= pool_max and pool_max >= 1")
        if dsn is not None and not _valid_dsn(dsn):
            r.fail("postgres.dsn", "is not a libpq connection string or postgresql:// URL")
        if dsn:
            postgres = PostgresConfig(dsn, pool_min, pool_max)

    redis = None
    if (rd := r.table(raw, "redis")) is not None:
        url = r.get(rd, "redis", "url", str, required=True)
        username = r.get(rd, "redis", "username", str)
        password = r.get(rd, "redis", "password", str)
        prefix = r.get(rd, "redis", "prefix", str, default=f"{tenant}:{service}:")
        if url is not None and url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
            r.fail("redis.url", "must start with redis://, rediss:// or unix://")
        if url:
            redis = RedisConfig(url, username, password, prefix)

    r.get(raw, "", "webhook_secret", str)
    for name in ("antiban", "templates"):
        r.table(raw, name)
    evolution = None
    if (ev := r.table(raw, "evolution")) is not None and ev.get("url"):
        url = r.get(ev, "evolution", "url", str, default="")
        if url and not url.startswith(("http://", "https://")):
            r.fail("evolution.url", "must start with http:// or https://")
        version = r.get(ev, "evolution", "api_version", int, default=2)
        if version not in (1, 2):
            r.fail("evolution.api_version", "must be 1 or 2")
        evolution = EvolutionSettings(
            url=url, api_key=r.get(ev, "evolution", "api_key", str, default=""), api_version=version,
            webhook_url=r.get(ev, "evolution", "webhook_url", str, default=""),
            webhook_jwt_key=r.get(ev, "evolution", "webhook_jwt_key", str, default=""))
    instances = r.get(raw, "", "instances", list, default=[])
    if not all(isinstance(i, str) and i for i in instances):
        r.fail("instances", "must be a list of instance names")
        instances = []
    display_name = r.get(raw, "", "display_name", str, default=tenant)
    release = r.get(raw, "", "release", str, default="unknown")

    if r.problems:
        raise ConfigError(f"invalid config {path}: {'; '.join(r.problems)} ({_FIX})")
    return ServiceConfig(
        path=path, tenant=tenant, service=service, display_name=display_name, release=release,
        log_level=log_level, http_host=host, http_port=port, graceful_timeout=float(graceful),
        postgres=postgres, redis=redis, raw=raw, evolution=evolution, instances=tuple(instances),
    )


def _valid_dsn(dsn: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except Exception:  # psycopg's message can quote the DSN (and its password): say nothing more
        return False
    return True
