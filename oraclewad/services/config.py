"""The child's JSON config (OWA_CONFIG_FD or OWA_CONFIG): read, validate against the schema in
oraclewad/childconfig.py, and report every problem on one line.

Unknown keys are refused, except in a config written for a newer schema than this release's (a
tenant rolled back to an older release under a newer daemon): those are kept, and the runtime
logs them at start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from oraclewad import childconfig, contract
from oraclewad.childconfig import ChildConfig
from oraclewad.childconfig import Evolution as EvolutionSettings
from oraclewad.childconfig import Postgres as PostgresConfig
from oraclewad.childconfig import Redis as RedisConfig
from oraclewad.services.logs import LEVELS

EX_CONFIG = contract.EX_CONFIG
_FIX = "fix the tenant's entry in tenants.d and reload (or the JSON file when running standalone)"


class ConfigError(Exception):
    """The config cannot be used; str() is one line naming the key(s) and the fix."""

    exit_code = EX_CONFIG


@dataclass(frozen=True)
class ServiceConfig:
    """The decoded schema plus what the child derives from it and its environment."""

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
    schema: ChildConfig
    evolution: EvolutionSettings | None = None   # None: no [evolution] url, nothing to send through
    instances: tuple[str, ...] = ()              # this service's own Evolution instances
    unknown_keys: tuple[str, ...] = ()           # tolerated: written for a newer schema


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
            raise ConfigError(f"{contract.ENV_CONFIG}: not set; point it at the service's JSON config file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{contract.ENV_CONFIG}: cannot read {path}: {exc.strerror or exc}") from None
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
        raise ConfigError(f"{contract.ENV_CONFIG_FD}: {value!r} is not a file descriptor number") from None
    try:
        with os.fdopen(fd, "rb") as f:     # read once, then closed: nothing to inherit further
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{contract.ENV_CONFIG_FD}: cannot read fd {fd}: {exc.strerror or exc}") from None
    try:
        return f"fd {fd}", data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{contract.ENV_CONFIG_FD}: fd {fd} is not UTF-8 text") from None


def parse(raw: Mapping[str, Any], service: str, env: Mapping[str, str], *, path: str = "<config>",
          need_port: bool = True) -> ServiceConfig:
    newer = isinstance(raw.get("schema"), int) and raw["schema"] > childconfig.SCHEMA
    decoded = childconfig.decode(ChildConfig, raw, tolerate_unknown=newer)
    problems = decoded.problems
    cfg: ChildConfig = decoded.value or ChildConfig()
    problems += _identity(raw, cfg, service, env)
    log_level = cfg.log_level.lower()
    if log_level not in LEVELS:
        problems.append(f"log_level: must be one of {', '.join(LEVELS)}")
    if need_port and cfg.http.port is None and "http.port: must" not in " ".join(problems):
        problems.append("http.port: is required")
    if cfg.postgres is not None and not _valid_dsn(cfg.postgres.dsn):
        problems.append("postgres.dsn: is not a libpq connection string or postgresql:// URL")
    if problems:
        raise ConfigError(f"invalid config {path}: {'; '.join(problems)} ({_FIX})")
    tenant = cfg.tenant or env.get(contract.ENV_TENANT, "")
    redis = cfg.redis
    if redis is not None and redis.prefix is None:
        redis = replace(redis, prefix=f"{tenant}:{service}:")
    return ServiceConfig(
        path=path, tenant=tenant, service=service, display_name=cfg.display_name or tenant,
        release=cfg.release, log_level=log_level, http_host=cfg.http.host, http_port=cfg.http.port,
        graceful_timeout=cfg.http.graceful_timeout_s, postgres=cfg.postgres or None, redis=redis, raw=raw,
        evolution=cfg.evolution if cfg.evolution and cfg.evolution.url else None,
        instances=cfg.instances, schema=cfg, unknown_keys=tuple(decoded.unknown))


def _identity(raw: Mapping[str, Any], cfg: ChildConfig, service: str, env: Mapping[str, str]) -> list[str]:
    """The config, OWA_TENANT/OWA_SERVICE and the program must name the same tenant and service."""
    problems = []
    env_tenant, env_service = env.get(contract.ENV_TENANT), env.get(contract.ENV_SERVICE)
    if raw.get("tenant") is None and contract.ENV_TENANT not in env:
        problems.append("tenant: is required")
    elif "tenant" in raw and not (cfg.tenant or env_tenant):
        problems.append("tenant: must not be empty")
    if env_tenant and cfg.tenant and env_tenant != cfg.tenant:
        problems.append(f"tenant: is {cfg.tenant!r} but {contract.ENV_TENANT} is {env_tenant!r}; "
                        "they must agree")
    if cfg.service and cfg.service != service:
        problems.append(f"service: is {cfg.service!r} but this program is the {service!r} service")
    if env_service and env_service != service:
        problems.append(f"{contract.ENV_SERVICE}: is {env_service!r} but this program is the "
                        f"{service!r} service")
    return problems


def _valid_dsn(dsn: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except Exception:  # psycopg's message can quote the DSN (and its password): say nothing more
        return False
    return True
