"""Tables for people and JSON for scripts, from the daemon's protobuf answers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb

DASH = "-"


def to_dict(msg: Message) -> dict[str, Any]:
    """Every field by its proto name; unset optional fields are null; int64 stays a number."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        if field.enum_type is not None and field.name.endswith(("_enum", "_enums")):
            continue    # the typed twin of a string field, which JSON shows (control.proto)
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: (to_dict(v) if value_field.message_type else v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [to_dict(v) if field.message_type else v for v in value]
        elif field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Struct":
                out[field.name] = _sorted(json_format.MessageToDict(value))  # maps have no order
            else:
                out[field.name] = to_dict(value) if msg.HasField(field.name) else None
        elif field.has_presence and not msg.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = value
    return out


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False)


def json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[DASH if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def opt(msg: Message, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def services_table(services: Sequence[Any]) -> str:
    if not services:
        return "no services"
    rows = [(s.tenant, s.service, s.state, opt(s, "pid"), duration(opt(s, "uptime_s")), s.restarts,
             s.release, yes_no(s.ready), opt(s, "port")) for s in services]
    headers = ("TENANT", "SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "RELEASE", "READY", "PORT")
    text = table(headers, rows)
    # A ready service's message is history (its last exit); for the others it says what is wrong.
    # An invalid tenant file is one row, its problems one per line under the table.
    notes = []
    for s in services:
        if not s.message or s.ready:
            continue
        lines = s.message.splitlines()
        if s.state_enum == pb.STATE_INVALID:
            notes += [f"  {s.tenant}.toml:"] + [f"    {line}" for line in lines]
        else:
            notes.append(f"  {s.tenant}/{s.service}: {lines[0]}")
            notes += [f"    {line}" for line in lines[1:]]
    return text + ("\n" + "\n".join(notes) if notes else "")


def tenants_table(tenants: Sequence[Any]) -> str:
    if not tenants:
        return "no tenants (add one with `oraclectl tenant add ID`)"
    rows = []
    for t in tenants:
        states = ", ".join(f"{s.service} {s.state}" for s in t.states) or DASH
        ports = ", ".join(f"{k}:{v}" for k, v in sorted(t.ports.items())) or DASH
        rows.append((t.id, t.name, ",".join(t.services), t.release, ports, yes_no(t.provisioned), states))
    return table(("ID", "NAME", "SERVICES", "RELEASE", "PORTS", "PROVISIONED", "STATE"), rows)


def size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f}{unit}" if unit == "B" else f"{nbytes:.1f}{unit}"
        nbytes /= 1024
    return ""


def removed_table(tenants: Sequence[Any]) -> str:
    if not tenants:
        return "no removed tenants with kept data"
    rows = [(t.id, when(opt(t, "removed_at")), size(t.size_bytes)) for t in tenants]
    lines = table(("ID", "REMOVED", "SIZE"), rows).splitlines()
    out = lines[:1]
    for t, line in zip(tenants, lines[1:], strict=True):
        out.append(line)
        out += [f"  kept: {k}" for k in t.kept]
    return "\n".join(out)


def when(ts: float | None) -> str:
    import time

    return DASH if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def tenant_detail(t: Any) -> str:
    def field(label: str, value: object) -> str:
        return f"  {label + ':':<16}{value}"

    lines = [f"tenant {t.id} ({t.name})",
             field("services", ", ".join(t.services) or DASH),
             field("release", t.release or DASH)]
    for service in t.services:
        port = t.ports.get(service)
        lines.append(field(f"{service} port", port if port is not None else DASH))
    lines += [field("webhook URL", t.webhook_url or DASH),
              field("secrets in", f"{t.secrets_file or DASH} (a file on the daemon's host, mode 0600)"),
              field("tenant file", t.source_file or DASH),
              field("provisioned", yes_no(t.provisioned))]
    lines += [field("problem", p) for p in t.problems]
    if t.states:
        lines += ["", services_table(list(t.states))]
    return "\n".join(lines)


def health_report(services: Sequence[Any], states: Sequence[Any] = ()) -> str:
    """One row per service (supervision state, health, detail), then each of its checks with
    its latency, its detail and its last error (kept by the service after it recovered)."""
    if not services:
        return "no services"
    state_of = {(s.tenant, s.service): s.state for s in states}
    headers = ("TENANT", "SERVICE", "STATE", "HEALTH", "DETAIL")
    rows = [(h.tenant, h.service, state_of.get((h.tenant, h.service)), h.status, h.detail) for h in services]
    widths = [max(len(headers[i]), *(len(_cell(r[i])) for r in rows)) for i in range(len(headers))]

    def line(cells: Sequence[Any]) -> str:
        return "  ".join(_cell(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers)]
    for h, row in zip(services, rows, strict=True):
        out.append(line(row))
        checks = json_format.MessageToDict(h.checks)
        for name in sorted(checks):       # a stable order, call after call
            out.append("    " + _check_line(name, checks[name]))
    return "\n".join(out)


def _cell(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def _check_line(name: str, check: Any) -> str:
    if not isinstance(check, dict):
        return f"{name:<10} {_short(check)}"
    if check.get("skipped"):
        verdict = "skipped"
    else:
        verdict = "ok" if check.get("ok", check.get("status") == "ok") else "FAILING"
    latency = check.get("latency_ms")
    parts = [f"{name:<10}", f"{verdict:<8}", f"{latency:.1f}ms" if isinstance(latency, int | float) else DASH]
    if check.get("detail"):
        parts.append(str(check["detail"]))
    if check.get("last_error") and verdict != "FAILING":
        when = check.get("last_error_at")
        stamp = f" {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}" if isinstance(
            when, int | float) else ""
        parts.append(f"(last error{stamp}: {check['last_error']})")
    return "  ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("status", "ok", "state"):
            if key in value:
                return _short(value[key])
        return "{...}"
    if isinstance(value, bool):
        return "ok" if value else "fail"
    return str(value)


def seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s" if value < 3600 else duration(value)


def count(value: float) -> str:
    return f"{value:.0f}"


# figure -> (column header, how its value is written). The header names the quantity and the
# value carries the unit ("56.9MiB", "1.20s"), so the two always agree.
FIGURES: dict[str, tuple[str, Callable[[float], str]]] = {
    "uptime_s": ("UPTIME", duration),
    "restarts": ("RESTARTS", count),
    "ready": ("READY", lambda v: yes_no(bool(v))),
    "cpu_seconds": ("CPU", seconds),
    "rss_bytes": ("RSS", size),
    "pss_bytes": ("PSS", size),
    "start_seconds": ("START", seconds),
    "log_bytes": ("LOGS", size),
    "last_exit_code": ("LAST_EXIT", count),
    "outbox_depth": ("OUTBOX", count),
    "outbox_oldest_s": ("OLDEST", duration),
    "messages_sent": ("SENT", count),
    "uncertain": ("UNCERTAIN", count),
    "http_requests": ("REQUESTS", count),
}
HIDDEN_FIGURES = frozenset({"scrape_seconds", "scrape_timeouts", "scrape_errors"})


def _other_figure(name: str) -> tuple[str, Callable[[float], str]]:
    """A figure this oraclectl does not know (a newer daemon): header and unit from its name."""
    for suffix, fmt in (("_bytes", size), ("_seconds", seconds), ("_s", duration)):
        if name.endswith(suffix):
            return name.removesuffix(suffix).upper(), fmt
    return name.upper(), lambda v: f"{v:g}"


def metrics_table(services: Sequence[Any]) -> str:
    if not services:
        return "no services"
    names = {k for m in services for k in m.figures} - HIDDEN_FIGURES
    columns = [n for n in FIGURES if n in names] + sorted(names - set(FIGURES))
    spec = [FIGURES.get(c) or _other_figure(c) for c in columns]
    rows = [(m.tenant, m.service, *(fmt(m.figures[c]) if c in m.figures else None
                                    for c, (_, fmt) in zip(columns, spec, strict=True)))
            for m in services]
    return table(("TENANT", "SERVICE", *(header for header, _ in spec)), rows)


def reload_text(r: Any) -> str:
    lines = []
    for label, items in (("added", r.added), ("removed", r.removed), ("restarted", r.restarted),
                         ("unchanged", r.unchanged)):
        lines.append(f"{label + ':':<11}{', '.join(items) if items else DASH}")
    lines += [f"problem:   {p}" for p in r.problems]
    return "\n".join(lines)


def event_line(e: Any) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts))
    who = e.tenant + (f"/{e.service}" if e.service else "")
    parts = [when, who or DASH, e.kind]
    if e.state:
        parts.append(e.state)
    if e.message:
        parts.append(e.message)
    return "  ".join(parts)


def qr_text(data: str) -> str:
    """A QR code drawn with block characters, two modules per line, for a terminal."""
    import io

    import segno

    out = io.StringIO()
    segno.make(data, error="l").terminal(out=out, compact=True, border=2)
    return out.getvalue().rstrip("\n")


def instance_lines(services: Sequence[Any]) -> list[str]:
    """Each instance's state as its service sees it (the `instances` check of /healthz)."""
    lines = []
    for h in services:
        check = json_format.MessageToDict(h.checks).get("instances")
        if not isinstance(check, dict):
            continue
        lines.append(f"{h.tenant}/{h.service}: {check.get('detail', '')}")
        for name, row in (check.get("instances") or {}).items():
            sends = "sends" if row.get("can_send") else "cannot send"
            lines.append(f"  {name}: {row.get('state')} ({sends}; {row.get('detail', '')})")
    return lines


_RECORD_KEYS = ("ts", "level", "channel", "msg", "tenant", "service")


def _record(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def log_line(line: str) -> str:
    """A JSON log record as `time LEVEL channel message key=value...`; other lines as they are."""
    record = _record(line)
    if record is None:
        return line
    when = str(record.get("ts", "")).replace("T", " ").removesuffix("Z")
    level = str(record.get("level", "")).upper()
    channel = str(record.get("channel", ""))
    parts = [when, f"{level:<7}", f"{channel:<9}", str(record.get("msg", ""))]
    fields = [f"{k}={_field(v)}" for k, v in record.items() if k not in _RECORD_KEYS]
    return " ".join(p for p in parts if p) + ("  " + " ".join(fields) if fields else "")


def _field(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def log_record(line: str, tenant: str, service: str) -> dict[str, Any]:
    """The raw record (for --json); a raw stderr line becomes a record of its own."""
    record = _record(line)
    if record is None:
        record = {"level": "error", "channel": "stderr", "msg": line}
    return {"tenant": tenant, "service": service, **record} if tenant else {"service": service, **record}
