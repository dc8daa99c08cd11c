"""`tenant import-env`: a per-client `.env` of the old Node system -> an AddTenant request.

Values of secret keys (and of keys we do not know) are never printed: warnings name keys only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb

SERVICES = ("recovery", "broadcast")   # oraclewad.tenants.ids.SERVICES (oraclectl imports only the proto)
SECRET_PLACEHOLDER = "<from EVOLUTION_API_KEY, stored 0600 on add>"
_SECRET_HINTS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "PASS")

WARMUP_STAGES = ("day1", "day2", "day3", "mature")
CORE_KEYS = frozenset({
    "CLIENT_ID", "CLIENT_NAME", "SERVICE_TYPE", "RECOVERY_PORT", "BROADCAST_PORT",
    "RECOVERY_DB_NAME", "BROADCAST_DB_NAME", "ANTIBAN_STRATEGY", "ANTIBAN_DELAY_MIN", "ANTIBAN_DELAY_MAX",
    "ANTIBAN_BATCH_SIZE", "ANTIBAN_PAUSE_MIN", "ANTIBAN_PAUSE_MAX",
    "WORKING_HOURS_START", "WORKING_HOURS_END", "WORKING_HOURS_TIMEZONE",
    "EVOLUTION_API_URL", "EVOLUTION_API_KEY", "EVOLUTION_INSTANCE_NAME", "EVOLUTION_INSTANCES",
    *(f"CHIP_WARMUP_{stage.upper()}_{end}" for stage in WARMUP_STAGES for end in ("MIN", "MAX")),
})
# Known to the old system but meaningless here; reported as notes, not warnings.
IGNORED_KEYS = {
    "BROADCAST_ISOLATED": "each service always runs as its own process",
    "NODE_ENV": "the daemon has no development mode switch",
    "PORT": "ports come from RECOVERY_PORT/BROADCAST_PORT or the daemon's port range",
    "LOG_LEVEL": "the daemon keeps every level and splits logs by channel",
    "LOG_DIR": "the daemon owns the log files",
    "TZ": "use WORKING_HOURS_TIMEZONE",
    **{k: "the daemon provisions each service's database itself" for k in (
        "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DATABASE_URL",
        "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")},
    **{k: "the daemon provisions each service's Redis user itself" for k in (
        "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_URL", "REDIS_DB", "REDIS_PREFIX")},
}


class EnvFileError(ValueError):
    """The file cannot be converted; `problems` name lines and keys, never secret values."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# ---- dotenv syntax -----------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_EXPAND = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _scan_quoted(body: str, quote: str) -> tuple[str, str] | None:
    """(value, rest after the closing quote), or None when the quote is not closed in `body`."""
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and quote == '"':
            i += 2
            continue
        if c == quote:
            return body[:i], body[i + 1:]
        i += 1
    return None


def parse_dotenv(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse dotenv syntax: comments, `export`, single/double quotes (multi-line), `${VAR}` of earlier keys.

    Returns (values, warnings); raises EnvFileError listing every malformed line.
    """
    values: dict[str, str] = {}
    warnings: list[str] = []
    problems: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno, stripped = i + 1, lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        if re.match(r"export\s", stripped):
            stripped = stripped[len("export"):].lstrip()
        key, sep, rest = stripped.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            problems.append(f"line {lineno}: expected KEY=VALUE")
            continue
        rest = rest.lstrip()
        if rest[:1] in ("'", '"'):
            quote, body = rest[0], rest[1:]
            scanned = _scan_quoted(body, quote)
            while scanned is None and i < len(lines):     # a quoted value may span lines
                body += "\n" + lines[i]
                i += 1
                scanned = _scan_quoted(body, quote)
            if scanned is None:
                problems.append(f"line {lineno}: {key}: the {quote} quote is never closed")
                continue
            value, after = scanned
            if after.strip() and not after.strip().startswith("#"):
                problems.append(f"line {lineno}: {key}: unexpected text after the closing quote")
                continue
            if quote == '"':
                value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), value, flags=re.S)
                value = _expand(value, values, key, lineno, warnings)
        else:
            value = re.split(r"\s#", rest, maxsplit=1)[0].strip()   # ` # comment` ends an unquoted value
            value = _expand(value, values, key, lineno, warnings)
        if key in values:
            warnings.append(f"line {lineno}: {key} is set again; the last value wins")
        values[key] = value
    if problems:
        raise EnvFileError(problems)
    return values, warnings


def _expand(value: str, earlier: dict[str, str], key: str, lineno: int, warnings: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in earlier:
            return earlier[name]
        warnings.append(f"line {lineno}: {key} refers to ${{{name}}}, which is not set earlier in the file; "
                        "kept as written")
        return m.group(0)

    return _EXPAND.sub(sub, value)


# ---- conversion ------------------------------------------------------------------------------

def is_secret(key: str) -> bool:
    return any(hint in key.upper() for hint in _SECRET_HINTS)


@dataclass
class Conversion:
    tenant_id: str
    name: str
    services: tuple[str, ...]
    evolution_url: str = ""
    evolution_api_key: str = field(default="", repr=False)
    instances: tuple[str, ...] = ()            # [recovery] instances
    broadcast_instances: tuple[str, ...] = ()  # [broadcast] instances
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def new_tenant(self, release: str = "") -> pb.NewTenant:
        return pb.NewTenant(id=self.tenant_id, name=self.name, services=list(self.services), release=release,
                            evolution_url=self.evolution_url, evolution_api_key=self.evolution_api_key,
                            recovery_instances=list(self.instances),
                            broadcast_instances=list(self.broadcast_instances),
                            extra_toml=tomli_w.dumps(self.extra) if self.extra else "")

    def tenant_doc(self) -> dict[str, Any]:
        """The tenant file the daemon would write, with the secret replaced by where it goes."""
        services = "all" if set(self.services) == set(SERVICES) else list(self.services)
        doc: dict[str, Any] = {"id": self.tenant_id, "name": self.name, "services": services}
        evolution: dict[str, Any] = {}
        if self.evolution_url:
            evolution["url"] = self.evolution_url
        if self.evolution_api_key:
            evolution["api_key_file"] = SECRET_PLACEHOLDER
        if evolution:
            doc["evolution"] = evolution
        for key, value in self.extra.items():
            doc[key] = value
        for service, instances in (("recovery", self.instances), ("broadcast", self.broadcast_instances)):
            if instances:
                doc[service] = {**doc.get(service, {}), "instances": list(instances)}
        return doc

    def to_toml(self) -> str:
        return tomli_w.dumps(self.tenant_doc())


def _id_key(tenant_id: str) -> str:
    return tenant_id.lower().replace("-", "_")


class _Reader:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.problems: list[str] = []

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        return value.strip() if value is not None and value.strip() else None

    def _bad(self, key: str, what: str) -> None:
        shown = "" if is_secret(key) else f", got {self.values[key]!r}"
        self.problems.append(f"{key}: must be {what}{shown}")

    def integer(self, key: str, low: int = 0, high: int | None = None) -> int | None:
        value = self.text(key)
        if value is None:
            return None
        number = int(value) if re.fullmatch(r"[+]?\d+", value) else None
        if number is None or number < low or (high is not None and number > high):
            self._bad(key, f"a whole number{f' between {low} and {high}' if high else f' >= {low}'}")
            return None
        return int(value)

    def millis_as_seconds(self, key: str) -> float | None:
        value = self.text(key)
        if value is None:
            return None
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if ms <= 0:
            self._bad(key, "a positive number of milliseconds")
            return None
        return ms / 1000.0

    def clock(self, key: str) -> str | None:
        value = self.text(key)
        if value is None:
            return None
        m = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?", value)
        if not m or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59:
            self._bad(key, "an hour like 8 or 08:00")
            return None
        return f"{int(m.group(1)):02d}:{m.group(2) or '00'}"


def convert(values: dict[str, str], *, tenant_id: str | None = None, source: str = ".env") -> Conversion:
    """Map the old keys onto a NewTenant; raises EnvFileError listing every unusable value."""
    r = _Reader(values)
    warnings: list[str] = []
    notes: list[str] = []
    tid = _tenant_id(r, tenant_id, notes)
    kind, services = _services(r)
    extra: dict[str, Any] = _ports(r, kind, services, notes)
    warnings += _database_warnings(r, tid, services)
    if antiban := _antiban(r):
        extra = {"antiban": antiban, **extra}
    url = r.text("EVOLUTION_API_URL") or ""
    if url and not url.startswith(("http://", "https://")):
        r._bad("EVOLUTION_API_URL", "an http:// or https:// URL")
    instances = [i.strip() for i in (r.text("EVOLUTION_INSTANCES") or "").split(",") if i.strip()]
    if (single := r.text("EVOLUTION_INSTANCE_NAME")) and single not in instances:
        instances.append(single)
    # An instance belongs to one service: a broadcast-only client's numbers are broadcast's, any
    # other's go to recovery (order reminders are the numbers worth protecting).
    owner = "broadcast" if services == ("broadcast",) else "recovery"
    if instances and owner == "recovery" and "broadcast" in services:
        notes.append("EVOLUTION_INSTANCES became [recovery] instances: move the numbers that send "
                     "campaigns to [broadcast] instances (an instance belongs to one service)")
    _leftover_keys(values, source, warnings, notes)
    if r.problems:
        raise EnvFileError(r.problems)
    return Conversion(tenant_id=tid, name=r.text("CLIENT_NAME") or tid, services=services, evolution_url=url,
                      evolution_api_key=r.text("EVOLUTION_API_KEY") or "",
                      instances=tuple(instances) if owner == "recovery" else (),
                      broadcast_instances=tuple(instances) if owner == "broadcast" else (),
                      extra=extra, warnings=warnings, notes=notes)


def _tenant_id(r: _Reader, tenant_id: str | None, notes: list[str]) -> str:
    tid = tenant_id or r.text("CLIENT_ID")
    if not tid:
        r.problems.append("CLIENT_ID: missing; set it in the file or pass --id")
        return ""
    if tenant_id and r.text("CLIENT_ID") and r.text("CLIENT_ID") != tenant_id:
        notes.append(f"using --id {tenant_id} instead of CLIENT_ID={r.text('CLIENT_ID')}")
    return tid


def _services(r: _Reader) -> tuple[str, tuple[str, ...]]:
    kind = (r.text("SERVICE_TYPE") or "all").lower()
    if kind == "all":
        return kind, SERVICES
    if kind in SERVICES:
        return kind, (kind,)
    r._bad("SERVICE_TYPE", "all, recovery or broadcast")
    return kind, SERVICES


def _ports(r: _Reader, kind: str, services: tuple[str, ...], notes: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for service in SERVICES:
        port = r.integer(f"{service.upper()}_PORT", 1, 65535)
        if port is None:
            continue
        if service in services:
            extra[service] = {"port": port}
        else:
            notes.append(f"{service.upper()}_PORT ignored: SERVICE_TYPE={kind} runs no {service} service")
    return extra


def _database_warnings(r: _Reader, tid: str, services: tuple[str, ...]) -> list[str]:
    warnings = []
    for service in services:
        key = f"{service.upper()}_DB_NAME"
        old = r.text(key)
        derived = f"{_id_key(tid)}_{service}" if tid else ""
        if old and tid and old != derived:
            warnings.append(f"{key}={old} differs from {derived}, the database the daemon creates: "
                            f"data stays in the old database; migrate it with `pg_dump -Fc -d {old} | "
                            f"pg_restore --no-owner -d {derived}` once the tenant is provisioned")
    return warnings


def _antiban(r: _Reader) -> dict[str, Any]:
    antiban: dict[str, Any] = {}
    if strategy := r.text("ANTIBAN_STRATEGY"):
        antiban["strategy"] = strategy
    # The old system counted delays and pauses in milliseconds; tenant files use seconds.
    for name in ("delay_min", "delay_max", "pause_min", "pause_max"):
        seconds = r.millis_as_seconds(f"ANTIBAN_{name.upper()}")
        if seconds is not None:
            antiban[name] = seconds
    batch = r.integer("ANTIBAN_BATCH_SIZE", 1)
    if batch is not None:
        antiban["batch_size"] = batch
    warmup: dict[str, dict[str, int]] = {}
    for stage in WARMUP_STAGES:
        for end in ("min", "max"):
            count = r.integer(f"CHIP_WARMUP_{stage.upper()}_{end.upper()}", 0)
            if count is not None:
                warmup.setdefault(stage, {})[end] = count
    if warmup:
        antiban["warmup"] = warmup
    hours: dict[str, str] = {}
    for end in ("start", "end"):
        clock = r.clock(f"WORKING_HOURS_{end.upper()}")
        if clock is not None:
            hours[end] = clock
    if tz := r.text("WORKING_HOURS_TIMEZONE"):
        hours["timezone"] = tz
    if hours:
        antiban["working_hours"] = hours
    return antiban


def _leftover_keys(values: dict[str, str], source: str, warnings: list[str], notes: list[str]) -> None:
    for key in values:
        if key in CORE_KEYS:
            continue
        if key in IGNORED_KEYS:
            notes.append(f"{key} ignored: {IGNORED_KEYS[key]}")
        else:
            warnings.append(f"unknown key {key} in {source}: not imported")
