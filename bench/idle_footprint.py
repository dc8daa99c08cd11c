"""Idle footprint: supervisor RSS and CPU, and the children's PSS, oraclewad vs supervisord 4.x.

Setups, one after the other in one run (each measured alone on the machine); A and B run once
per `--spawn` mode (default both: fork = children forked from a warm template per release,
exec = a fresh interpreter each):
  A. oraclewad with 50 provisioned tenants (100 children: recovery + broadcast, each with its own
     PostgreSQL database, Redis ACL user and WhatsApp instance in one Evolution sandbox; by
     default on the daemon's own embedded servers, whose max_connections (500) fits 100
     tenants, unlike a stock shared PostgreSQL's 100;
     `--backend external` for the machine's servers at 127.0.0.1);
  B. oraclewad with 100 `[programs.NAME]` host programs, each `python -m oraclewad.services.recovery`
     standalone (own OWA_CONFIG JSON with http.port, tenant, service, release; no postgres/redis;
     notify = true: the runtime sends READY=1/WATCHDOG=1 when NOTIFY_SOCKET is set);
  C. supervisord 4.x running the very same 100 commands with the same environment.
After all children are ready and a settle pause, an idle window (default 30 s) is measured:
supervisor CPU = delta of utime+stime in /proc/<pid>/stat (all threads), RSS = VmRSS
(/proc/<pid>/status, mean of samples every 5 s) and the sum of the supervised children's PSS
(/proc/<pid>/smaps_rollup, at the end of the window). B vs C is the like-for-like comparison.

Run: .venv/bin/python bench/idle_footprint.py [--window 30] [--tenants 50] [--programs 100]
     [--spawn fork,exec]   (issue 15's figures: --tenants 100 --programs 200)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b


@dataclass
class Figures:
    label: str
    children: int = 0
    start_s: float = float("nan")      # launch -> every child ready
    rss_mib: float = float("nan")      # supervisor VmRSS, mean over the window
    rss_max_mib: float = float("nan")
    pss_mib: float = float("nan")      # supervisor's own PSS
    threads: int | None = None
    cpu_pct: float = float("nan")      # supervisor CPU over the window, % of one core
    children_pss_mib: float = float("nan")
    children_cpu_pct: float = float("nan")
    others_pss_mib: float | None = None  # e.g. the embedded PostgreSQL/Redis under the daemon
    template_pss_mib: float | None = None  # fork mode: the templates (their pages shared with the children)
    restarts_in_window: int = 0
    stop_s: float = float("nan")
    notes: list[str] = field(default_factory=list)


def measure(label: str, sup_pid: int, child_pids: list[int], window: float, fig: Figures,
            restarts: Callable[[], int] | None = None) -> None:
    """Sample the supervisor and its children over an idle window."""
    b.log(f"{label}: measuring a {window:g}s idle window")
    fig.children = len(child_pids)
    before_restarts = restarts() if restarts else 0
    cpu0 = b.cpu_ticks(sup_pid)
    kids0 = {p: b.cpu_ticks(p) for p in child_pids}
    t0 = time.monotonic()
    rss = []
    while True:
        rss.append(b.rss_kib(sup_pid) or 0)
        left = t0 + window - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(5.0, left))
    elapsed = time.monotonic() - t0
    cpu1 = b.cpu_ticks(sup_pid)
    kids1 = {p: b.cpu_ticks(p) for p in child_pids}
    fig.cpu_pct = 100.0 * (cpu1 - cpu0) / b.CLK_TCK / elapsed
    gone = [p for p in child_pids if kids1[p] is None]
    fig.children_cpu_pct = 100.0 * sum(kids1[p] - kids0[p] for p in child_pids
                                       if kids0[p] is not None and kids1[p] is not None) / b.CLK_TCK / elapsed
    fig.rss_mib = statistics.mean(rss) / 1024
    fig.rss_max_mib = max(rss) / 1024
    fig.pss_mib = (b.pss_kib(sup_pid) or 0) / 1024
    fig.threads = b.threads(sup_pid)
    fig.children_pss_mib = sum(b.pss_kib(p) or 0 for p in child_pids) / 1024
    if gone:
        fig.notes.append(f"{len(gone)} children exited during the window")
    if restarts:
        fig.restarts_in_window = restarts() - before_restarts


# ---- A and B: oraclewad ----------------------------------------------------------------------

def _ancestors(pid: int, stop: int) -> list[int]:
    out = []
    while pid not in (stop, 0, 1):
        fields = b.stat_fields(pid)
        if not fields:
            break
        pid = int(fields[1])
        out.append(pid)
    return out


def _is_template(pid: int) -> bool:
    try:
        return b"oraclewad.services.template" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def run_oraclewad(root: Path, cleanup: b.Cleanup, label: str, *, backend: str, tenants: list[str],
                  programs: str, expected: int, window: float, settle: float, spawn: str) -> Figures:
    fig = Figures(label)
    root.mkdir()
    base = b.free_port_block(2 * len(tenants) + 10)
    config = b.write_config(root, backend=backend, port_base=base, port_count=2 * len(tenants) + 10,
                            extra=programs, policy=f'spawn = "{spawn}"')
    evolution = _evolution_sections(root, cleanup, tenants) if tenants else {}
    for tid in tenants:
        b.write_tenant(root, tid, body=evolution[tid])
    daemon = b.Daemon(root, config, cleanup)
    b.log(f"{label}: starting oraclewad")
    t0 = time.monotonic()
    daemon.start(timeout=240)
    daemon_ready = time.monotonic() - t0
    rows = daemon.wait_all_ready(expected, 240, what=label)
    fig.start_s = time.monotonic() - t0
    b.log(f"{label}: {len(rows)} children ready after {fig.start_s:.1f}s; settling {settle:g}s")
    fig.notes.append(f"daemon READY=1 {daemon_ready:.1f}s after launch, all {expected} children "
                     f"{fig.start_s:.1f}s after launch")
    restarts_at_ready = sum(r["restarts"] for r in rows)
    if restarts_at_ready:
        fig.notes.append(f"{restarts_at_ready} restarts while starting "
                         f"({', '.join(sorted({r['message'] for r in rows if r['restarts']}))[:200]})")
    time.sleep(settle)
    rows = daemon.status()
    child_pids = [r["pid"] for r in rows if r.get("pid")]
    # Anything else under the daemon (it is a child subreaper): the embedded PostgreSQL and Redis.
    others = [p for p in b.descendants(daemon.pid) if p not in set(child_pids)
              and not set(child_pids) & set(_ancestors(p, daemon.pid))]
    templates = [p for p in others if _is_template(p)]
    others = [p for p in others if p not in templates]
    if templates:
        fig.template_pss_mib = sum(b.pss_kib(p) or 0 for p in templates) / 1024
        fig.notes.append(f"{len(templates)} fork template(s), PSS {fig.template_pss_mib:.1f} MiB (counted in "
                         "children PSS sum and each below)")
    spawned = [r.get("message", "") for r in rows if "spawn=exec" in (r.get("message") or "")]
    if spawn == "fork" and spawned:
        fig.notes.append(f"{len(spawned)} children exec'd, not forked: {spawned[0][:160]}")
    if others:
        fig.others_pss_mib = sum(b.pss_kib(p) or 0 for p in others) / 1024
        fig.notes.append(f"{len(others)} other processes under the daemon (embedded servers), "
                         "not counted in children PSS")
    measure(label, daemon.pid, child_pids, window, fig,
            restarts=lambda: sum(r["restarts"] for r in daemon.status()))
    if fig.template_pss_mib:
        # The template's own PSS is the part of the shared pages charged to it: a cost of the children.
        fig.children_pss_mib += fig.template_pss_mib
    b.log(f"{label}: stopping oraclewad")
    t0 = time.monotonic()
    daemon.stop()
    fig.stop_s = time.monotonic() - t0
    if (drops := daemon.notify_drops()):
        fig.notes.append(f"sd_notify datagrams the children logged as lost (full notify queue): "
                         f"{daemon.drops_text(drops)}")
    for kind, n in sorted(daemon.warnings().items(), key=lambda kv: -kv[1])[:5]:
        fig.notes.append(f"daemon log: {n} x {kind}")
    return fig


def _evolution_sections(root: Path, cleanup: b.Cleanup, tenants: list[str]) -> dict[str, str]:
    """Tenants as in production: each service with its WhatsApp instance in an Evolution server
    (the sandbox, one for all), so each child holds an Evolution client and polls its instance."""
    import httpx
    from recovery_webhooks import start_sandbox

    url, api_key = start_sandbox(root, cleanup)
    key_file = root / "evolution.key"
    key_file.write_text(api_key)
    key_file.chmod(0o600)
    out = {}
    for tid in tenants:
        for n in (1, 2):
            httpx.post(f"{url}/_sandbox/instances",
                       json={"name": f"{tid}-{n}", "state": "open"}).raise_for_status()
        out[tid] = (f'[recovery]\ninstances = ["{tid}-1"]\n[broadcast]\ninstances = ["{tid}-2"]\n'
                    f'[evolution]\nurl = "{url}"\napi_key_file = "{key_file}"\n')
    return out


def standalone_configs(root: Path, count: int) -> list[tuple[str, Path, int]]:
    """One OWA_CONFIG JSON per standalone recovery program: (name, path, port)."""
    root.mkdir(parents=True, exist_ok=True)
    base = b.free_port_block(count)
    out = []
    for i in range(count):
        name = f"s{i:03d}"
        path = root / f"{name}.json"
        path.write_text(json.dumps({"tenant": name, "service": "recovery", "release": "bench",
                                    "http": {"host": "127.0.0.1", "port": base + i}}))
        path.chmod(0o600)
        out.append((name, path, base + i))
    return out


def programs_toml(progs: list[tuple[str, Path, int]], *, hold_ports: bool = False) -> str:
    """hold_ports: the daemon binds each program's port and hands it over as fd 3 (kept across
    restarts); otherwise the program binds http.port itself, as under supervisord."""
    parts = []
    for name, path, port in progs:
        parts.append(f'[programs.{name}]\ncommand = ["{b.PYTHON}", "-m", "oraclewad.services.recovery"]\n'
                     f'notify = true\n' + (f"port = {port}\n" if hold_ports else "") +
                     f'env = {{ OWA_CONFIG = "{path}", OWA_TENANT = "{name}", OWA_SERVICE = "recovery" }}\n')
    return "\n".join(parts)


# ---- C: supervisord --------------------------------------------------------------------------

def supervisord_conf(root: Path, progs: list[tuple[str, Path, int]]) -> Path:
    (root / "logs").mkdir(parents=True)
    lines = [
        "[supervisord]", "nodaemon=true", f"logfile={root}/supervisord.log",
        f"pidfile={root}/supervisord.pid",
        f"childlogdir={root}/logs", "loglevel=info", "user=" + (os.environ.get("USER") or "root"),
        "[unix_http_server]", f"file={root}/supervisor.sock", "chmod=0700",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]", f"serverurl=unix://{root}/supervisor.sock",
    ]
    if os.geteuid() != 0:
        lines.remove("user=" + (os.environ.get("USER") or "root"))
    for name, path, _port in progs:
        # Same log layout and rotation as oraclewad's defaults: stdout and stderr files, 50 MB x 10.
        lines += [f"[program:{name}]", f"command={b.PYTHON} -m oraclewad.services.recovery",
                  f'environment=OWA_CONFIG="{path}",OWA_TENANT="{name}",OWA_SERVICE="recovery"',
                  f"directory={root}", "autostart=true", "autorestart=true", "startsecs=1",
                  "stopsignal=TERM", "stopwaitsecs=10", "stopasgroup=true", "killasgroup=true",
                  f"stdout_logfile={root}/logs/{name}.out.log", "stdout_logfile_maxbytes=50MB",
                  "stdout_logfile_backups=10",
                  f"stderr_logfile={root}/logs/{name}.err.log", "stderr_logfile_maxbytes=50MB",
                  "stderr_logfile_backups=10"]
    conf = root / "supervisord.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_supervisord(root: Path, cleanup: b.Cleanup, progs: list[tuple[str, Path, int]], window: float,
                    settle: float) -> Figures:
    from importlib.metadata import version

    fig = Figures(f"supervisord {version('supervisor')}")
    conf = supervisord_conf(root, progs)
    tracked = b.Tracked()
    b.log("supervisord: starting")
    t0 = time.monotonic()
    proc, stop = b.start_supervisord(root, conf, tracked)

    cleanup.push(f"stop supervisord {proc.pid}", stop)
    pending = {port for _n, _p, port in progs}
    deadline = time.monotonic() + 240
    while pending and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"supervisord exited {proc.returncode}: "
                               f"{(root / 'supervisord.log').read_text()[-2000:]}")
        tracked.add(b.descendants(proc.pid))
        pending = {p for p in pending if not port_open(p)}
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"supervisord: {len(pending)} programs not listening after 240s")
    fig.start_s = time.monotonic() - t0
    b.log(f"supervisord: {len(progs)} programs listening after {fig.start_s:.1f}s; settling {settle:g}s")
    time.sleep(settle)
    child_pids = b.children_of(proc.pid)
    tracked.add(child_pids)
    if len(child_pids) != len(progs):
        fig.notes.append(f"{len(child_pids)} children for {len(progs)} programs")
    status = subprocess.run([str(b.BIN / "supervisorctl"), "-c", str(conf), "status"],
                            capture_output=True, text=True)
    not_running = [ln for ln in status.stdout.splitlines() if " RUNNING " not in ln]
    if not_running:
        fig.notes.append(f"not RUNNING: {not_running[:3]}")

    def spawns() -> int:
        # supervisord has no restart counter: count "spawned:" lines in its log instead.
        return (root / "supervisord.log").read_text().count("spawned: ")

    measure(fig.label, proc.pid, child_pids, window, fig, restarts=spawns)
    b.log("supervisord: stopping")
    t0 = time.monotonic()
    stop()
    fig.stop_s = time.monotonic() - t0
    return fig


# ---- report ----------------------------------------------------------------------------------

def report(figs: list[Figures], backend: str, window: float, tenants: int, programs: int) -> None:
    b.header("idle footprint: supervisor process and supervised children, idle",
             [f"idle window {window:g}s after all children ready; supervisor CPU = utime+stime delta "
              "(all threads) as % of one core",
              f"A = oraclewad, {tenants} tenants x 2 services, provisioned on {backend} PostgreSQL/Redis",
              f"B = oraclewad [programs] x{programs}; C = supervisord [program] x{programs}: the identical "
              "standalone `python -m oraclewad.services.recovery` (no DB/Redis)"])
    rows = [
        ("supervised children", *(f.children for f in figs)),
        ("launch -> all ready (s)", *(f.start_s for f in figs)),
        ("supervisor RSS mean (MiB)", *(f.rss_mib for f in figs)),
        ("supervisor RSS max (MiB)", *(f.rss_max_mib for f in figs)),
        ("supervisor PSS (MiB)", *(f.pss_mib for f in figs)),
        ("supervisor threads", *(f.threads for f in figs)),
        ("supervisor CPU idle (% core)", *(f.cpu_pct for f in figs)),
        ("children PSS sum (MiB)", *(f.children_pss_mib for f in figs)),
        ("children PSS each (MiB)", *(f.children_pss_mib / f.children if f.children else float("nan")
                                      for f in figs)),
        ("children CPU idle (% core)", *(f.children_cpu_pct for f in figs)),
        ("restarts/spawns in window", *(f.restarts_in_window for f in figs)),
        ("stop all (s)", *(f.stop_s for f in figs)),
    ]
    if any(f.others_pss_mib is not None for f in figs):
        rows.insert(9, ("embedded servers PSS (MiB)", *(f.others_pss_mib for f in figs)))
    print(b.table(["figure", *(f.label for f in figs)], rows, digits=2))
    sup = next((f for f in figs if f.label.startswith("supervisord")), None)
    if sup is not None:
        for f in figs:
            if f is sup:
                continue
            tag = f.label
            print(f"{tag} / supervisord RSS ratio: {f.rss_mib / sup.rss_mib:.2f}"
                  f" (PSS {f.pss_mib / sup.pss_mib:.2f}; threads {f.threads} vs {sup.threads})")
            print(f"{tag} / supervisord idle CPU ratio: "
                  + (f"{f.cpu_pct / sup.cpu_pct:.2f}" if sup.cpu_pct > 0 else
                     f"inf (supervisord used 0 ticks; oraclewad {f.cpu_pct:.2f}% of a core)"))
            each = (f.children_pss_mib / f.children) / (sup.children_pss_mib / sup.children) \
                if f.children and sup.children else float("nan")
            print(f"{tag} / supervisord children PSS ratio: {f.children_pss_mib / sup.children_pss_mib:.2f}"
                  f" (per child {each:.2f})")
            print(f"{tag} / supervisord cold start ratio: {f.start_s / sup.start_s:.2f}")
    for f in figs:
        if f.children and " fork " in f" {f.label} ":
            each = f.children_pss_mib / f.children
            met = "met" if each <= 8 else "NOT met"
            print(f"goal {f.label}: PSS per child {each:.1f} MiB (goal <= 8): {met};"
                  f" {f.children} children {f.children_pss_mib / 1024:.2f} GiB (200 under 2 GiB: "
                  f"{'met' if each * 200 < 2048 else 'NOT met'})")
    for f in figs:
        for note in f.notes:
            print(f"NOTE {f.label}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=30.0, help="idle window in seconds (default 30)")
    parser.add_argument("--settle", type=float, default=3.0, help="pause after all ready (default 3)")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--backend", choices=("auto", "external", "embedded"), default="embedded",
                        help="servers for A (default embedded: the bench's own PostgreSQL and Redis; "
                             "auto = the machine's when reachable)")
    parser.add_argument("--spawn", default="fork,exec", help="modes for A and B: fork,exec (default both)")
    parser.add_argument("--only", choices=("A", "B", "C"), action="append",
                        help="run only these setups (repeatable)")
    args = parser.parse_args()
    backend = args.backend
    if backend == "auto":
        backend = "external" if b.external_servers_reachable() else "embedded"
    only = set(args.only or "ABC")
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    figs: list[Figures] = []
    failures: list[str] = []
    with b.bench_session("idle") as (root, cleanup):
        modes = [m.strip() for m in args.spawn.split(",") if m.strip()]
        progs = standalone_configs(root / "configs", args.programs)
        for mode in modes:
            if "A" in only:
                ids = [b.unique_id("if") for _ in range(args.tenants)]
                sub = b.Cleanup()
                if backend == "external":
                    sub.push("drop provisioned databases/users", lambda ids=ids: b.drop_external(ids))
                cleanup.push(f"setup A {mode}", sub.run)
                try:
                    label = f"oraclewad {mode} {args.tenants} tenants"
                    figs.append(run_oraclewad(root / f"A-{mode}", sub, label,
                                              backend=backend, tenants=ids, programs="",
                                              expected=2 * args.tenants, window=args.window,
                                              settle=args.settle, spawn=mode))
                except RuntimeError as e:
                    failures.append(f"A {mode}: {e}")
                sub.run()
            if "B" in only:
                sub = b.Cleanup()
                cleanup.push(f"setup B {mode}", sub.run)
                try:
                    label = f"oraclewad {mode} {args.programs} programs"
                    figs.append(run_oraclewad(root / f"B-{mode}", sub, label,
                                              backend=backend, tenants=[], programs=programs_toml(progs),
                                              expected=args.programs, window=args.window, settle=args.settle,
                                              spawn=mode))
                except RuntimeError as e:
                    failures.append(f"B {mode}: {e}")
                sub.run()
        if "C" in only:
            sub = b.Cleanup()
            cleanup.push("setup C", sub.run)
            try:
                figs.append(run_supervisord(root / "C", sub, progs, args.window, args.settle))
            except RuntimeError as e:
                failures.append(f"C: {e}")
            sub.run()
    report(figs, backend, args.window, args.tenants, args.programs)
    print("load average (1, 5, 15 min) at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + f"; at the start: {load0}")
    for f in failures:
        print(f"FAILED {f}")


if __name__ == "__main__":
    main()
