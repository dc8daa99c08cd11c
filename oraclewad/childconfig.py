"""The child config: one typed schema, written by the daemon (specs.py) and read by the service
(services/config.py). Stdlib only: both sides import it, and a forked child pays no import for it.

Each field is declared once, here: its JSON key is the attribute name, its type the annotation,
its default the dataclass default; `check(...)` adds a rule the value must meet. `decode` refuses
a wrong type, a missing required field and an unknown key at every level, each problem naming the
key ("http.port: must be an integer, not str", "redis.pasword: unknown key; did you mean password?").

To add a field: declare it below, set it in `SpecBuilder.service`, read it from `ServiceConfig.schema`.
Removing or renaming one is a SCHEMA bump (see `SCHEMA`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# The schema version the daemon writes. A child reading a config of a newer version (a tenant
# rolled back to an older release) keeps the unknown keys as a warning rather than refusing to
# start; a config of its own version or older has no excuse for one.
SCHEMA = 1

T = TypeVar("T")


def check(rule: Callable[[Any], bool], message: str, *, default: Any = dataclasses.MISSING,
          secret: bool = False) -> Any:
    """A field whose value must satisfy `rule` (else "<key>: <message>")."""
    return field(default=default, repr=not secret, metadata={"check": (rule, message)})


def secret(default: Any = dataclasses.MISSING) -> Any:
    """A field kept out of repr() (it can end up in a log line)."""
    return field(default=default, repr=False)


@dataclass(frozen=True)
class Http:
    host: str = "127.0.0.1"
    port: int | None = check(lambda p: 0 <= p <= 65535, "must be between 0 and 65535", default=None)
    graceful_timeout_s: float = check(lambda s: s >= 0, "must not be negative", default=8.0)


@dataclass(frozen=True)
class Postgres:
    dsn: str = secret()          # a libpq string or URL with the service's own password
    pool_min: int = 0
    pool_max: int = 4

    def problems(self) -> list[str]:
        if self.pool_max < 1 or self.pool_min < 0 or self.pool_min > self.pool_max:
            return ["pool_min: needs 0 <= pool_min <= pool_max and pool_max >= 1"]
        return []


@dataclass(frozen=True)
class Redis:
    url: str = check(lambda u: u.split("://", 1)[0] in ("redis", "rediss", "unix"),
                     "must start with redis://, rediss:// or unix://")
    username: str | None = None
    password: str | None = secret(None)
    prefix: str | None = None    # None: "<tenant>:<service>:"
    ca_file: str | None = None   # TLS to the Redis server (the daemon's [redis] settings)
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Shared:
    dsn: str = secret()          # the tenant's shared database (opt-outs), same role


@dataclass(frozen=True)
class Evolution:
    url: str = check(lambda u: not u or u.startswith(("http://", "https://")),
                     "must start with http:// or https://", default="")
    api_key: str = secret("")
    api_version: int = check(lambda v: v in (1, 2), "must be 1 or 2", default=2)
    # Where this service's instances post their events, and the key that signs them
    # (Evolution's headers.jwt_key): see docs/evolution.md.
    webhook_url: str = ""
    webhook_jwt_key: str = secret("")


@dataclass(frozen=True)
class WebhookSecret:
    secret: str = secret()
    until: float | None = None   # None: the current one


@dataclass(frozen=True)
class WebhookToken:
    token: str = secret()
    until: float | None = None


@dataclass(frozen=True)
class ChildConfig:
    tenant: str = ""             # required unless OWA_TENANT is set (standalone runs)
    service: str = ""            # "": the program's own
    display_name: str = ""       # "": the tenant id
    release: str = "unknown"
    log_level: str = "info"
    schema: int = SCHEMA
    http: Http = Http()
    postgres: Postgres | None = None
    redis: Redis | None = None
    shared: Shared | None = None
    evolution: Evolution | None = None
    instances: tuple[str, ...] = check(lambda names: all(names), "must be a list of instance names",
                                       default=())
    webhook_secret: str | None = secret(None)
    webhook_secrets: tuple[WebhookSecret, ...] = ()
    webhook_token: str | None = secret(None)
    webhook_tokens_previous: tuple[WebhookToken, ...] = ()
    # Tenant-file tables the service checks with its own rules (antiban_plan, recovery_plan).
    antiban: dict[str, Any] | None = None
    templates: dict[str, Any] | None = None
    recovery: dict[str, Any] | None = None
    broadcast: dict[str, Any] | None = None


# ---------------------------------------------------------------- writing

def encode(config: ChildConfig) -> str:
    """The JSON the child reads; a None field is left out (the reader's default)."""
    return json.dumps(_plain(config), sort_keys=True)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(v) for f in dataclasses.fields(value)
                if (v := getattr(value, f.name)) is not None}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- reading

class Decoded(typing.NamedTuple):
    value: Any                   # with problems: a best effort, bad values at their defaults (or None)
    problems: list[str]          # "key: what is wrong", in declaration order
    unknown: list[str]           # dotted keys the schema does not declare


def decode(cls: type[T], raw: Any, *, prefix: str = "", tolerate_unknown: bool = False) -> Decoded:
    """`raw` (parsed JSON) as a `cls`. Unknown keys are problems unless `tolerate_unknown`."""
    out = Decoded(None, [], [])
    value = _decode(cls, raw, prefix, out)
    if not tolerate_unknown:
        out.problems.extend(out.unknown)
    return out._replace(value=None if value is dataclasses.MISSING else value,
                        unknown=sorted(u.split(":", 1)[0] for u in out.unknown))


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
          list: "a list", tuple: "a list"}
_hints: dict[type, dict[str, Any]] = {}


def warm(kind: Any = None, seen: set[Any] | None = None) -> None:
    """Resolve the type hints of ChildConfig and every table in it now. The fork template calls it:
    resolving them compiles each annotation string, 7 ms of every forked child's start otherwise."""
    kind = ChildConfig if kind is None else kind
    seen = set() if seen is None else seen
    if kind in seen:
        return
    seen.add(kind)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if kind not in _hints:
            _hints[kind] = typing.get_type_hints(kind)
        for hint in _hints[kind].values():
            warm(hint, seen)
    for arg in typing.get_args(kind):
        warm(arg, seen)


def _decode(kind: Any, raw: Any, key: str, out: Decoded) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):               # X | None
        inner = next(a for a in args if a is not type(None))
        return None if raw is None else _decode(inner, raw, key, out)
    if dataclasses.is_dataclass(kind):
        return _decode_table(kind, raw, key, out)
    base = origin or kind
    if base is Any:
        return raw
    wanted = (int, float) if base is float else (list,) if base is tuple else base
    # bool is an int subclass: true must not pass as a port number.
    if (isinstance(raw, bool) and base is not bool) or not isinstance(raw, wanted):
        out.problems.append(f"{key}: must be {_NAMES.get(base, base.__name__)}, not {type(raw).__name__}")
        return dataclasses.MISSING
    if base is tuple:
        items = [_decode(args[0], item, f"{key}[{i}]", out) for i, item in enumerate(raw)]
        return tuple(items)
    if base is float:
        return float(raw)
    return raw


def _decode_table(cls: type, raw: Any, key: str, out: Decoded) -> Any:
    if not isinstance(raw, dict):
        out.problems.append(f"{key}: must be an object, not {type(raw).__name__}")
        return dataclasses.MISSING
    hints = _hints.get(cls) or _hints.setdefault(cls, typing.get_type_hints(cls))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in sorted(raw.keys() - fields.keys(), key=str):
        near = difflib.get_close_matches(str(name), fields, n=1)
        hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(fields)}"
        out.unknown.append(f"{_join(key, name)}: unknown key; {hint}")
    values: dict[str, Any] = {}
    before = len(out.problems)
    for name, f in fields.items():
        sub = _join(key, name)
        if raw.get(name) is None:      # null is "not given": the default
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                out.problems.append(f"{sub}: is required")
            continue
        value = _decode(hints[name], raw[name], sub, out)
        rule = f.metadata.get("check")
        if value is not dataclasses.MISSING and rule and not rule[0](value):
            out.problems.append(f"{sub}: {rule[1]}")
        values[name] = value
    try:    # with problems, a best effort (bad values at their defaults) so later checks still run
        made = cls(**{k: v for k, v in values.items() if v is not dataclasses.MISSING})
    except TypeError:                  # a required field is missing or bad
        return dataclasses.MISSING
    if len(out.problems) > before:
        return made
    out.problems.extend(f"{_join(key, p)}" for p in getattr(made, "problems", lambda: [])())
    return made


def _join(prefix: str, name: object) -> str:
    return f"{prefix}.{name}" if prefix else str(name)

