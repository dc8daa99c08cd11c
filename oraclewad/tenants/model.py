"""The tenant model: one `tenants.d/<id>.toml` file, parsed and validated."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oraclewad import antiban_plan, broadcast_plan, recovery_plan
from oraclewad.errors import Problem
from oraclewad.settings import Policy
from oraclewad.tenants.ids import SERVICES, id_problem
from oraclewad.tenants.ids import unit_name as _unit_name
from oraclewad.tenants.schema import TENANT
from oraclewad.tomlcheck import TableReader, check_keys, port_number

# Limits on what a tenant file (or `tenant add`) may carry: status lines, logs and control
# answers repeat these strings, so none may be huge or carry terminal control characters.
MAX_NAME = 120
MAX_STRING = 2000
MAX_TEMPLATE = 4096
MAX_LIST = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEMPLATE_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")    # newline and tab are text there
EVOLUTION_API_VERSIONS = {1: 1, 2: 2, "1": 1, "2": 2, "v1": 1, "v2": 2}
INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    port: int | None
    policy: Policy
    instances: tuple[str, ...] = ()  # the Evolution instances this service sends through (its own)


@dataclass(frozen=True)
class EvolutionConfig:
    url: str = ""
    api_key_file: Path | None = None
    api_version: int = 2


def _parsed(text_field: str) -> property:
    """A read-only view of one of the JSON text fields as a dict."""
    def get(self: Tenant) -> dict[str, Any]:
        return json.loads(getattr(self, text_field))
    return property(get)


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    services: tuple[ServiceConfig, ...]
    release: str | None
    evolution: EvolutionConfig
    # Later issues give these tables their full meaning; until then they pass through as JSON text
    # so a Tenant stays hashable and a changed table counts as a changed effective config.
    antiban_json: str = "{}"
    templates_json: str = "{}"
    # [metrics] token_file: a bearer token guarding /tenants/<id>/metrics (None: open, like /metrics)
    metrics_token_file: Path | None = field(default=None, compare=False)
    recovery_json: str = "{}"  # the normalised [recovery] plan (steps, templates, window...)
    broadcast_json: str = "{}"  # the normalised [broadcast] plan (send_timeout)
    source: Path = field(default=Path(), compare=False)

    def service(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.name == name), None)

    def unit_names(self) -> list[str]:
        return [_unit_name(self.id, s.name) for s in self.services]

    antiban = _parsed("antiban_json")
    templates = _parsed("templates_json")
    recovery = _parsed("recovery_json")
    broadcast = _parsed("broadcast_json")


def _services(value: Any, reader: TableReader) -> tuple[str, ...]:
    if value == "all":
        return SERVICES
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not value
            or any(v not in SERVICES for v in value) or len(set(value)) != len(value)):
        reader.fail("services", 'must be "all" or a list drawn from ["recovery", "broadcast"], '
                                "each at most once")
        return ()
    return tuple(s for s in SERVICES if s in value)


def _antiban(reader: TableReader) -> dict[str, Any]:
    # Values are checked by the leaf module the engine shares; unknown keys by check_keys (schema.py).
    plan, problems = antiban_plan.parse(reader.table, prefix=reader.prefix)
    for key, message in problems:
        reader.problems.append(Problem(reader.source, key, message))
    return plan


def string_problems(doc: dict[str, Any], source: str) -> list[Problem]:
    """Every string or list in the document that is too long or carries control characters."""
    found: list[Problem] = []
    stack: list[tuple[str, Any]] = [(k, v) for k, v in doc.items()]
    while stack and len(found) < 10:
        key, value = stack.pop()
        in_templates = key == "templates" or key.startswith("templates.") or ".templates" in key
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}", v) for k, v in value.items())
            if len(value) > MAX_LIST:
                found.append(Problem(source, key, f"has {len(value)} keys; at most {MAX_LIST}"))
            for k in value:
                if len(k) > 100 or _CONTROL.search(k):
                    found.append(Problem(source, key, "has a key that is over 100 characters or "
                                         "holds control characters"))
        elif isinstance(value, list):
            if len(value) > MAX_LIST:
                found.append(Problem(source, key, f"has {len(value)} items; at most {MAX_LIST}"))
            stack.extend((f"{key}[{i}]" if not in_templates else key, v)
                         for i, v in enumerate(value[:MAX_LIST]))
        elif isinstance(value, str):
            limit = MAX_NAME if key == "name" else MAX_TEMPLATE if in_templates else MAX_STRING
            bad = _TEMPLATE_CONTROL if in_templates else _CONTROL
            if len(value) > limit:
                found.append(Problem(source, key, f"is {len(value)} characters long; at most {limit}"))
            elif (m := bad.search(value)) is not None:
                found.append(Problem(source, key, f"holds the control character {m.group()!r} "
                                     f"at position {m.start()}: remove it"))
    return found


def _instances(sub: TableReader, service: str, owners: dict[str, str]) -> tuple[str, ...]:
    """[<service>] instances: valid names, each listed once, and never also by the other service
    (a campaign must not get the number that sends order reminders banned)."""
    names = sub.get("instances", list, [])
    result: list[str] = []
    for name in names:
        if not isinstance(name, str) or not INSTANCE_NAME.fullmatch(name):
            sub.fail("instances", f"{name!r} is not an instance name: letters, digits, '_', '.', '-', "
                                  "at most 64, a letter or digit first")
            continue
        if name in result:
            sub.fail("instances", f"{name!r} is listed twice")
            continue
        if (other := owners.get(name)) is not None:
            sub.fail("instances", f"{name!r} is also in [{other}] instances: an instance belongs to one "
                                  f"service; remove it from {other}.instances or {service}.instances")
            continue
        owners[name] = service
        result.append(name)
    return tuple(result)


def _recovery_plan(reader: TableReader) -> dict[str, Any]:
    # The plan's own checks live in a leaf module the service shares (templates, spintax, steps).
    # Unknown keys are left to check_keys (schema.py), which reports them for every table alike.
    plan, problems = recovery_plan.parse(reader.table, prefix=reader.prefix,
                                         ignore=frozenset(reader.table) - recovery_plan.KEYS)
    for key, message in problems:
        reader.problems.append(Problem(reader.source, key, message))
    return plan


def _broadcast_plan(reader: TableReader) -> dict[str, Any]:
    plan, problems = broadcast_plan.parse(reader.table, prefix=reader.prefix)
    for key, message in problems:
        reader.problems.append(Problem(reader.source, key, message))
    return plan


_PLANS = {"recovery": _recovery_plan, "broadcast": _broadcast_plan}


def parse_tenant(doc: dict[str, Any], source: Path, policy: Policy,
                 problems: list[Problem]) -> Tenant | None:
    """Validate one tenant document; None (with problems appended) when it is unusable."""
    before = len(problems)
    if bad := string_problems(doc, str(source)):
        problems.extend(sorted(bad, key=lambda p: p.key))
        return None
    check_keys(doc, TENANT, str(source), problems)
    root = TableReader(doc, str(source), "", problems)
    tenant_id = root.get("id", str)
    stem = source.stem
    if tenant_id is None:
        if "id" not in doc:  # a wrong type was reported by get()
            root.fail("id", f'is required: add id = "{stem}"')
        tenant_id = stem
    elif (why := id_problem(tenant_id)) is not None:
        root.fail("id", why)
    elif tenant_id != stem:
        root.fail("id", f"{tenant_id!r} must match the file name: rename the file to {tenant_id}.toml")
    name = root.get("name", str, tenant_id)
    wanted = _services(root.get("services", (str, list), "all"), root)
    release = root.get("release", str)
    if release is not None:
        release = release.strip() or None     # normalised (v2.1.0 == 2.1.0) by oraclewad.releases

    services = []
    owners: dict[str, str] = {}
    plans: dict[str, dict[str, Any]] = {}
    for svc in SERVICES:
        sub = root.sub(svc)
        port = sub.get("port", int, check=port_number)
        instances = _instances(sub, svc, owners)
        svc_policy = policy.overridden(sub.sub("policy"))
        plans[svc] = _PLANS[svc](sub)
        if svc in wanted:
            services.append(ServiceConfig(svc, port, svc_policy, instances))

    ev = root.sub("evolution")
    url = ev.get("url", str, "")
    if url and not url.startswith(("http://", "https://")):
        ev.fail("url", "must start with http:// or https://")
    key_file = ev.get("api_key_file", str)
    if "instances" in ev.table:
        ev.fail("instances", "moved: each service lists its own instances, e.g. [recovery] "
                             'instances = ["imperio-1"] and [broadcast] instances = ["imperio-2"]')
    raw_version = ev.table.get("api_version", 2)
    ev.seen.add("api_version")
    api_version = (EVOLUTION_API_VERSIONS.get(raw_version)
                   if isinstance(raw_version, int | str) and not isinstance(raw_version, bool) else None)
    if api_version is None:
        ev.fail("api_version", f"must be 2 (Evolution v2) or 1 (Evolution v1.8), got {raw_version!r}")
        api_version = 2
    evolution = EvolutionConfig(
        url=url, api_version=api_version,
        api_key_file=None if key_file is None else source.parent / Path(key_file).expanduser())

    m = root.sub("metrics")
    token_file = m.get("token_file", str)
    m.finish()

    antiban = _antiban(root.sub("antiban"))
    templates = root.get("templates", dict, {})
    if not all(isinstance(v, str | list) for v in templates.values()):
        root.fail("templates", "values must be strings or lists of strings (variants)")
    if len(problems) > before:
        return None
    return Tenant(id=tenant_id, name=name, services=tuple(services), release=release,
                  evolution=evolution, antiban_json=json.dumps(antiban, sort_keys=True),
                  templates_json=json.dumps(templates, sort_keys=True),
                  recovery_json=json.dumps(plans["recovery"], sort_keys=True), source=source,
                  broadcast_json=json.dumps(plans["broadcast"], sort_keys=True),
                  metrics_token_file=None if token_file is None
                  else source.parent / Path(token_file).expanduser())
