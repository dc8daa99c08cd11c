"""`oraclectl campaign ...`: the broadcast service's campaign API, through the daemon's ServiceCall
(oraclectl -> daemon gRPC -> the tenant's broadcast admin socket), so an operator never needs curl.

A big CSV goes in parts of about 1.5 MB (each with the header and its first line number), so the
lines the service answers are the file's own and no part exceeds the daemon's message size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from oraclectl import render

PART_BYTES = 1_500_000
SHOWN_LINES = 20
Call = Callable[..., tuple[int, Any]]   # (ctx, tenant, service, method, path, body) -> (status, answer)

_call: Call | None = None
_usage: type[Exception] = ValueError


def _api(ctx: Any, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    assert _call is not None
    return _call(ctx, ctx.args.id, "broadcast", method, path, body)


def _failed(ctx: Any, what: str, status: int, answer: Any) -> int:
    detail = answer.get("detail") or answer.get("error") if isinstance(answer, dict) else None
    ctx.err(f"oraclectl: {what}: {detail or f'the broadcast service answered HTTP {status}'}")
    return 1


def _templates(a: argparse.Namespace) -> list[str] | None:
    out = list(a.template or [])
    if a.templates_file:
        text = _read_text(a.templates_file)
        if a.templates_file.endswith(".json"):
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                raise _usage(f"{a.templates_file}: not JSON ({exc})") from None
            out += loaded if isinstance(loaded, list) else [loaded]
        else:
            out.append(text.strip())
    return out or None


def _read_bytes(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise _usage(f"cannot read {path}: {exc.strerror}") from None


def _read_text(path: str) -> str:
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")  # Excel's "CSV" on a Brazilian Windows


def csv_parts(text: str, limit: int = PART_BYTES) -> Iterator[tuple[str, int]]:
    """(header + records, the file line of the header) parts, never splitting a quoted record."""
    text = text.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines:
        yield "", 1
        return
    header, body = lines[0], lines[1:]
    part: list[str] = []
    size, start, open_quote = 0, 1, False
    for number, line in enumerate(body, start=2):
        if not part:
            start = number - 1
        part.append(line)
        size += len(line)
        open_quote ^= line.count('"') % 2 == 1   # inside a quoted field spanning lines
        if size >= limit and not open_quote:
            yield header + "".join(part), start
            part, size = [], 0
    if part or start == 1:
        yield header + "".join(part), start


def cmd_list(ctx: Any) -> int:
    status, answer = _api(ctx, "GET", "/campaigns")
    if status != 200:
        return _failed(ctx, f"the campaigns of {ctx.args.id}", status, answer)
    if ctx.json:
        ctx.out(render.dumps(answer))
        return 0
    rows = []
    for c in answer["campaigns"]:
        n = c.get("counts") or {}
        total = sum(n.values())
        done = total - n.get("pending", 0) - n.get("sending", 0)
        sent = sum(n.get(s, 0) for s in ("sent", "delivered", "read"))
        rows.append((c["id"], c["name"], c["status"], total, sent,
                     f"{done / total * 100:.0f}%" if total else "-", render.when(c.get("created_at"))))
    ctx.out(render.table(("ID", "NAME", "STATUS", "RECIPIENTS", "SENT", "DONE", "CREATED"), rows)
            if rows else f"no campaigns: `oraclectl campaign create {ctx.args.id} NAME --template TEXT`")
    return 0


def cmd_create(ctx: Any) -> int:
    a = ctx.args
    templates = _templates(a)
    if not templates:
        raise _usage("a campaign needs a template: --template 'Oi {{first_name}}!' (repeat for variations)"
                     " or --templates-file FILE")
    status, answer = _api(ctx, "POST", "/campaigns", {"name": a.name, "templates": templates})
    if status != 201:
        return _failed(ctx, "create", status, answer)
    if ctx.json:
        ctx.out(render.dumps(answer))
    else:
        ctx.out(f"created campaign {answer['id']} ({answer['name']}); next: "
                f"oraclectl campaign import {a.id} {answer['id']} contacts.csv")
    return 0


def cmd_import(ctx: Any) -> int:
    a = ctx.args
    text = _read_text(a.file)
    totals = {"accepted": 0, "invalid": 0, "duplicate": 0, "suppressed": 0}
    listed: dict[str, list[Any]] = {"invalid_lines": [], "duplicate_lines": [], "suppressed_lines": []}
    columns: list[str] = []
    stripped = text.lstrip()
    if a.file.endswith(".json") or stripped.startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise _usage(f"{a.file}: not JSON ({exc})") from None
        bodies: list[dict[str, Any]] = [{"recipients": items}]
    else:
        bodies = [{"csv": part, "first_line": first} for part, first in csv_parts(text)]
    for body in bodies:
        status, answer = _api(ctx, "POST", f"/campaigns/{a.campaign}/recipients", body)
        if status != 200:
            where = f" (from line {body['first_line']})" if "first_line" in body else ""
            return _failed(ctx, f"import {a.file}{where}", status, answer)
        for k in totals:
            totals[k] += answer[k]
        for k in listed:
            listed[k] += answer.get(k) or []
        columns += [c for c in answer.get("columns") or [] if c not in columns]
    if ctx.json:
        ctx.out(render.dumps({"campaign": a.campaign, **totals, "columns": columns, **listed}))
        return 0
    ctx.out(f"{a.file}: {totals['accepted']} accepted, {totals['invalid']} invalid, "
            f"{totals['duplicate']} duplicate, {totals['suppressed']} suppressed (opted out)")
    if columns:
        ctx.out("  template variables from the columns: " + ", ".join("{{" + c + "}}" for c in columns))
    for key, label in (("invalid_lines", "invalid"), ("duplicate_lines", "duplicate"),
                       ("suppressed_lines", "suppressed")):
        for item in listed[key][:SHOWN_LINES]:
            where = f"line {item['line']}" if "line" in item else f"item {item.get('item')}"
            why = item.get("reason") or ("opted out" if label == "suppressed" else "")
            if "first_line" in item:
                why = f"same number as line {item['first_line']}"
            shown = item.get("value", item.get("phone", ""))
            ctx.out(f"  {label:<10} {where}: {shown!r} {why}".rstrip())
        if len(listed[key]) > SHOWN_LINES:
            ctx.out(f"  ... {len(listed[key]) - SHOWN_LINES} more {label} (--json lists them)")
    return 0


def cmd_test(ctx: Any) -> int:
    a = ctx.args
    status, answer = _api(ctx, "POST", f"/campaigns/{a.campaign}/test", {"phone": a.phone})
    if status != 200:
        return _failed(ctx, "test", status, answer)
    ctx.out(render.dumps(answer) if ctx.json else
            f"sent to {answer['phone']} through {answer['instance']}:\n\n{answer['text']}")
    return 0


def at_arg(text: str) -> float:
    """`--at 2026-12-02T09:00-03:00` or `--at 09:00` (today or tomorrow, this machine's zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            hh, mm = (int(x) for x in text.split(":"))
            now = datetime.now().astimezone()
            moment = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if moment <= now:
                moment = moment.fromtimestamp(moment.timestamp() + 86400).astimezone()
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: use 2026-12-02T09:00:00-03:00 or HH:MM") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


def _act(action: str) -> Callable[[Any], int]:
    def run(ctx: Any) -> int:
        a = ctx.args
        body: dict[str, Any] = {}
        if action == "start" and getattr(a, "at", None) is not None:
            body["at"] = a.at
        status, answer = _api(ctx, "POST", f"/campaigns/{a.campaign}/{action}", body)
        if status != 200:
            return _failed(ctx, action, status, answer)
        if ctx.json:
            ctx.out(render.dumps(answer))
        else:
            ctx.out(show_text(answer))
        return 0
    return run


def cmd_edit(ctx: Any) -> int:
    a = ctx.args
    body: dict[str, Any] = {}
    if a.name:
        body["name"] = a.name
    templates = _templates(a)
    if templates:
        body["templates"] = templates
    if not body:
        raise _usage("give --name, --template or --templates-file")
    status, answer = _api(ctx, "PATCH", f"/campaigns/{a.campaign}", body)
    if status != 200:
        return _failed(ctx, "edit", status, answer)
    ctx.out(render.dumps(answer) if ctx.json else show_text(answer))
    return 0


def cmd_show(ctx: Any) -> int:
    a = ctx.args
    while True:
        status, answer = _api(ctx, "GET", f"/campaigns/{a.campaign}")
        if status != 200:
            return _failed(ctx, "show", status, answer)
        ctx.out(render.dumps(answer) if ctx.json else show_text(answer))
        if not a.watch or answer["status"] in ("completed", "cancelled"):
            return 0
        time.sleep(a.watch)
        ctx.out("")


def show_text(c: dict[str, Any]) -> str:
    n = c.get("counts") or {}
    order = ("pending", "sending", "sent", "delivered", "read", "uncertain", "failed", "invalid",
             "suppressed", "cancelled")
    lines = [f"campaign {c['id']} {c['name']!r}: {c['status']}",
             f"  {'recipients:':<14}{c.get('total', 0)} ("
             + (", ".join(f"{s} {n[s]}" for s in order if n.get(s)) or "none yet") + ")",
             f"  {'progress:':<14}{c.get('progress', 0) * 100:.1f}%"]
    eta = c.get("eta")
    if c["status"] == "running" or (c["status"] == "scheduled" and eta):
        if eta:
            lines.append(f"  {'ETA:':<14}{render.when(eta)} (in {render.duration(c.get('eta_seconds'))})"
                         + (f"; {c['eta_reason']}" if c.get("eta_reason") else ""))
        else:
            lines.append(f"  {'ETA:':<14}none: {c.get('eta_reason') or 'no instance will send'}")
    elif c.get("duration_if_started") is not None:
        lines.append(f"  {'would take:':<14}{render.duration(c['duration_if_started'])} if started now")
    if c.get("waiting"):
        lines.append(f"  {'waiting:':<14}{c['waiting']['reason']}")   # the engine's reason says until when
    for key, label in (("scheduled_at", "starts at"), ("started_at", "started"), ("finished_at", "finished")):
        if c.get(key):
            lines.append(f"  {label + ':':<14}{render.when(c[key])}")
    templates = c.get("templates")
    for t in templates if isinstance(templates, list) else [templates]:
        lines.append(f"  {'template:':<14}{t if isinstance(t, str) else t.get('text')}")
    return "\n".join(lines)


def add_commands(commands: Any, command: Callable[..., argparse.ArgumentParser], call: Call,
                 usage_error: type[Exception]) -> None:
    global _call, _usage
    _call, _usage = call, usage_error
    group = commands.add_parser(
        "campaign", help="broadcast campaigns: create, import, test, start, pause, resume, cancel, edit, "
        "show, list", description="The tenant's broadcast campaigns (through the daemon).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    sub = group.add_subparsers(dest="campaign_command", metavar="SUBCOMMAND", required=True)

    def with_campaign(name: str, help_text: str, func: Callable[[Any], int]) -> argparse.ArgumentParser:
        p = command(sub, name, help_text, func)
        p.add_argument("id", metavar="ID", help="the tenant")
        p.add_argument("campaign", type=int, metavar="CAMPAIGN", help="the campaign's number")
        return p

    def template_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--template", "-t", action="append", metavar="TEXT",
                       help="a variation (repeatable): spintax {Oi|Olá} and {{first_name}}, {{name}}, "
                            "{{phone}} or any CSV column as {{cidade}}")
        p.add_argument("--templates-file", metavar="FILE",
                       help="a text file (one template) or a JSON list of templates")

    p = command(sub, "list", "the tenant's campaigns", cmd_list)
    p.add_argument("id", metavar="ID")
    p = command(sub, "create", "a new campaign (draft) with its templates", cmd_create)
    p.add_argument("id", metavar="ID")
    p.add_argument("name")
    template_options(p)
    p = with_campaign("import", "add recipients from a CSV (; or ,) or a JSON list; answers accepted, "
                      "invalid (line and reason), duplicate, suppressed", cmd_import)
    p.add_argument("file", help="contacts.csv, contacts.json or - (stdin)")
    p = with_campaign("test", "send the rendered message to a test number first", cmd_test)
    p.add_argument("phone", help="e.g. 11987654321")
    p = with_campaign("start", "start now, or --at a time", _act("start"))
    p.add_argument("--at", type=at_arg, metavar="TIME", help="2026-12-02T09:00:00-03:00 or HH:MM")
    with_campaign("pause", "stop sending (what is in flight finishes)", _act("pause"))
    with_campaign("resume", "go on where it stopped", _act("resume"))
    with_campaign("cancel", "stop for good: pending recipients are cancelled", _act("cancel"))
    p = with_campaign("edit", "change the name or (draft, scheduled or paused) the templates", cmd_edit)
    p.add_argument("--name")
    template_options(p)
    p = with_campaign("show", "counts, progress, ETA and why messages wait", cmd_show)
    p.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds until it ends")


EXAMPLES = """\
examples:
  oraclectl campaign create imperio "Black Friday" -t '{Oi|Olá} {{first_name}}, 30% off hoje!' \\
      -t '{{first_name}}, a Black Friday começou: 30% off'
  oraclectl campaign import imperio 1 contatos.csv      # telefone;nome;cidade ... (or .json)
  oraclectl campaign test imperio 1 11987654321          # the rendered text to your own phone
  oraclectl campaign start imperio 1 --at 09:00
  oraclectl campaign show imperio 1 --watch 10
  oraclectl campaign pause imperio 1
  oraclectl campaign edit imperio 1 -t 'Oi {{first_name}}, última chance!'
  oraclectl campaign resume imperio 1
  oraclectl campaign list imperio
"""
