"""Restart latency: `kill -9` of a tenant's recovery child -> that service READY again.

A real oraclewad supervises 20 tenants (recovery only). Each is killed once with SIGKILL after
serving for seconds, so every restart is the first of a streak of a process READY for longer than
`min_uptime` (1 s): restarted at once, with no delay (`[policy]`, docs in README "Supervision").
Killing one service 20 times would instead measure the crash-loop backoff (backoff_initial 0.1 s,
doubling) and the breaker (5 restarts in 10 min -> degraded, retrying at backoff_max = 60 s).
Observed through `oraclectl --json events -f` (the daemon's state-change stream): the time the
bench sees the `running` event, plus the daemon's own timestamps of the `backoff` (exit noticed),
`starting` (respawned) and `running` (READY=1) events.

Then, side by side with supervisord 4.x running the identical standalone child (`python -m
oraclewad.services.recovery` with its own OWA_CONFIG, no DB), each of N such programs is killed
once and a client hammers its port from the kill on: kill -> first HTTP answer, and how many
connections were refused meanwhile (oraclewad holds the listening socket, so connections queue in
its backlog; supervisord's child binds its own, so they are refused until the new one listens).
Each oraclewad setup runs once per `--spawn` mode (default fork and exec).

Run: .venv/bin/python bench/restart_latency.py [--kills 20] [--programs 10] [--spawn fork,exec]
     [--backoff-initial 0.1] [--backend external|embedded]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as b
from idle_footprint import programs_toml, standalone_configs, supervisord_conf


def wait_dead(pid: int, timeout: float = 2.0) -> None:
    """Until pid is a zombie or gone (a SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = b.stat_fields(pid)
        if not fields or fields[0] == "Z":
            return
        time.sleep(0.0005)


def http_probe(port: int, since: float, timeout: float = 30.0) -> tuple[float | None, int]:
    """Connect and GET / until an HTTP answer comes: (seconds since `since`, refused connections)."""
    refused = 0
    deadline = since + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if conn.recv(12).startswith(b"HTTP/"):
                    return time.monotonic() - since, refused
        except ConnectionRefusedError:
            refused += 1
            time.sleep(0.001)
        except OSError:
            time.sleep(0.001)      # reset by a dying process: try again
    return None, refused


def kill_and_probe(pid: int, port: int) -> tuple[float | None, int]:
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    return http_probe(port, t0)


def run_mode(root: Path, cleanup: b.Cleanup, mode: str, args: argparse.Namespace, backend: str,  # noqa: C901 (one linear measuring script)
             progs: list[tuple[str, Path, int]]) -> dict:
    """One oraclewad in spawn `mode`: tenants killed once each (events), then its programs (HTTP)."""
    from dataclasses import replace

    from oraclewad.settings import Policy

    policy = replace(Policy(), backoff_initial=args.backoff_initial, spawn=mode)
    root.mkdir()
    ids = [b.unique_id("rl") for _ in range(args.kills)]
    if backend == "external":
        cleanup.push("drop provisioned databases/users", lambda: b.drop_external(ids))
    base = b.free_port_block(args.kills + 10)
    config = b.write_config(root, backend=backend, port_base=base, port_count=args.kills + 10,
                            policy=f'spawn = "{mode}"\nbackoff_initial = {args.backoff_initial}',
                            extra=programs_toml(progs, hold_ports=True))
    for tid in ids:
        b.write_tenant(root, tid, '["recovery"]')
    daemon = b.Daemon(root, config, cleanup)
    b.log(f"{mode}: starting oraclewad with {len(ids)} tenants (recovery only, {backend} PostgreSQL/Redis)"
          f" and {len(progs)} standalone programs")
    started = time.monotonic()
    daemon.start()
    rows = daemon.wait_all_ready(len(ids) + len(progs), 240)
    b.log(f"{mode}: all {len(rows)} services ready after {time.monotonic() - started:.1f}s; settling 3s")
    time.sleep(3)

    events: queue.Queue[tuple[float, dict]] = queue.Queue()
    stream = subprocess.Popen([str(b.BIN / "oraclectl"), "--socket", str(daemon.socket_path), "--json",
                               "events", "-f", "-n", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                              start_new_session=True)

    def stop_stream() -> None:
        b.stop_process(stream, 5)

    cleanup.push("stop the events stream", stop_stream)

    def read() -> None:
        assert stream.stdout is not None
        for line in stream.stdout:
            arrived = time.monotonic()
            try:
                events.put((arrived, json.loads(line)))
            except json.JSONDecodeError:
                b.log(f"events: not JSON: {line.rstrip()}")

    threading.Thread(target=read, daemon=True).start()
    time.sleep(1.0)  # the stream is open before the first kill

    results = []    # (tenant, exit_noticed, respawned, ready_daemon, ready_observed)
    failures = []
    by_tenant = {r["tenant"]: r for r in daemon.status()}
    for i, tid in enumerate(ids):
        old_pid = by_tenant[tid]["pid"]
        while not events.empty():
            events.get_nowait()
        kill_wall, kill_mono = time.time(), time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        phases: dict[str, float] = {}
        observed = None
        deadline = kill_mono + 30
        while observed is None and time.monotonic() < deadline:
            try:
                arrived, ev = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if ev.get("tenant") != tid or ev.get("kind") != "state":
                continue
            phases.setdefault(ev["state"], ev["ts"] - kill_wall)
            if ev["state"] == "running":
                observed = arrived - kill_mono
        if observed is None:
            failures.append(f"{tid}: no `running` event within 30s (saw {sorted(phases)})")
            continue
        now = {r["tenant"]: r for r in daemon.status(tid)}[tid]
        if not (now["ready"] and now["pid"] != old_pid):
            failures.append(f"{tid}: `running` event but status says {now}")
        results.append((tid, phases.get("backoff"), phases.get("starting"), phases["running"], observed))
        b.log(f"{mode}: kill {i + 1}/{len(ids)}: ready again after {observed * 1000:.0f} ms")
        time.sleep(1.0)

    http = []       # (first HTTP answer after kill, refused connections), per program
    for name, _path, port in progs:
        row = next(r for r in daemon.status("programs") if r["service"] == name)
        answered, refused = kill_and_probe(row["pid"], port)
        if answered is None:
            failures.append(f"program {name}: no HTTP answer within 30 s")
        else:
            http.append((answered, refused))
        time.sleep(0.5)
    rows_after = daemon.status()
    warnings = daemon.warnings()
    unexpected = [r for r in rows_after if r["restarts"] != 1]
    spawned = sorted({r["message"] for r in rows_after if "spawn=exec" in (r.get("message") or "")})
    stop_stream()
    daemon.stop()
    return {"mode": mode, "policy": policy, "ids": ids, "results": results, "failures": failures,
            "warnings": warnings, "unexpected": unexpected, "http": http, "spawned": spawned}


def run_supervisord(root: Path, cleanup: b.Cleanup, progs: list[tuple[str, Path, int]]) -> dict:
    """supervisord running the same standalone programs: each killed once, probed over HTTP."""
    from importlib.metadata import version

    root.mkdir()
    conf = supervisord_conf(root, progs)
    tracked = b.Tracked()
    proc, stop = b.start_supervisord(root, conf, tracked)

    cleanup.push(f"stop supervisord {proc.pid}", stop)
    label = f"supervisord {version('supervisor')}"
    b.log(f"{label}: starting {len(progs)} programs")
    for _name, _path, port in progs:
        answered, _ = http_probe(port, time.monotonic(), timeout=240)
        if answered is None:
            raise RuntimeError(f"supervisord: port {port} never answered")
    time.sleep(3)
    http, failures = [], []
    for name, _path, port in progs:
        out = subprocess.run([str(b.BIN / "supervisorctl"), "-c", str(conf), "pid", name],
                             capture_output=True, text=True).stdout.strip()
        tracked.add(b.descendants(proc.pid))
        answered, refused = kill_and_probe(int(out), port)
        if answered is None:
            failures.append(f"{name}: no HTTP answer within 30 s")
        else:
            http.append((answered, refused))
        time.sleep(0.5)
    stop()
    return {"mode": label, "http": http, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="tenants to kill once each (default 20)")
    parser.add_argument("--programs", type=int, default=10,
                        help="standalone programs killed once each, oraclewad vs supervisord (default 10)")
    parser.add_argument("--spawn", default="fork,exec", help="oraclewad spawn modes (default fork,exec)")
    parser.add_argument("--backoff-initial", type=float, default=0.1,
                        help="[policy] backoff_initial, the first delay of a crash loop (default 0.1 s; "
                             "a first crash after min_uptime is restarted at once)")
    parser.add_argument("--backend", choices=("auto", "external", "embedded"), default="auto")
    args = parser.parse_args()
    backend = args.backend
    if backend == "auto":
        backend = "external" if b.external_servers_reachable() else "embedded"
    runs = []
    with b.bench_session("restart") as (root, cleanup):
        progs = standalone_configs(root / "configs", args.programs)
        for mode in [m.strip() for m in args.spawn.split(",") if m.strip()]:
            sub = b.Cleanup()
            cleanup.push(f"oraclewad {mode}", sub.run)
            runs.append(run_mode(root / mode, sub, mode, args, backend, progs))
            sub.run()
        sup = None
        if progs:
            sub = b.Cleanup()
            cleanup.push("supervisord", sub.run)
            sup = run_supervisord(root / "supervisord", sub, progs)
            sub.run()
    for run in runs:
        report(run, backend)
    report_http(runs, sup)


def report(run: dict, backend: str) -> None:
    policy, ids, results, failures = run["policy"], run["ids"], run["results"], run["failures"]
    warnings, unexpected = run["warnings"], run["unexpected"]
    b.header(f"restart latency, spawn = {run['mode']}: kill -9 of a tenant's recovery child -> READY again",
             [f"oraclewad supervising {len(ids)} tenants (recovery only), {backend} PostgreSQL/Redis",
              f"policy: min_uptime {policy.min_uptime:g}s (a first crash after it: restarted at once), "
              f"backoff_initial {policy.backoff_initial:g}s for loops, "
              f"start_timeout {policy.start_timeout:g}s; "
              "one kill per tenant, each after seconds of serving",
              "observed via the `oraclectl --json events -f` stream (not status polling); "
              "'daemon' columns are the daemon's event timestamps"])
    if not results:
        print("no successful restart measured")
    else:
        cols = [("exit noticed (backoff ev)", 1), ("respawned (starting ev)", 2),
                ("READY (running ev, daemon ts)", 3), ("READY observed by client", 4)]
        out = []
        for label, idx in cols:
            values = [r[idx] * 1000 for r in results if r[idx] is not None]
            if values:
                s = b.summary(values)
                out.append((label, s["n"], s["min"], s["median"], s["p90"], s["max"]))
        print(b.table(["kill -> (ms)", "n", "min", "median", "p90", "max"], out))
        child_start = [(r[3] - r[2]) * 1000 for r in results if r[2] is not None]
        ready = [r[4] for r in results]
        respawn = [r[2] * 1000 for r in results if r[2] is not None]
        print(f"median kill->READY: {b.summary(ready)['median'] * 1000:.0f} ms = exit noticed and respawned "
              f"(no delay: min_uptime) median {b.summary(respawn)['median']:.0f} ms + child start "
              f"(spawn->READY=1) median {b.summary(child_start)['median']:.0f} ms")
        if run["mode"] == "fork":
            med = b.summary(ready)["median"] * 1000
            print(f"goal (fork): kill -9 -> READY < 50 ms: median {med:.0f} ms, "
                  f"{'met' if med < 50 else 'NOT met'}")
    for kind, n in sorted(warnings.items(), key=lambda kv: -kv[1])[:5]:
        print(f"NOTE daemon log: {n} x {kind}")
    for f in failures:
        print(f"FAILED: {f}")
    if unexpected:
        print(f"NOTE: {len(unexpected)} services show restarts != 1 after the run: "
              + ", ".join(f"{r['tenant']}/{r['service']}={r['restarts']}" for r in unexpected[:5]))
    for note in run["spawned"]:
        print(f"NOTE exec'd instead of forked: {note}")


def report_http(runs: list[dict], sup: dict | None) -> None:
    rows, medians = [], {}
    for run in [*runs, *([sup] if sup else [])]:
        if not run["http"]:
            continue
        answered = b.summary([a * 1000 for a, _ in run["http"]])
        refused = [r for _, r in run["http"]]
        label = run["mode"] if run is sup else f"oraclewad {run['mode']}"
        medians[label] = answered["median"]
        rows.append((label, answered["n"], answered["min"], answered["median"], answered["max"],
                     sum(refused), max(refused)))
    if not rows:
        return
    b.header("kill -9 -> first HTTP answer, the same standalone child (no DB), refused connections meanwhile",
             ["a client connects and sends GET / from the moment the child is dead, retrying each refusal "
              "after 1 ms"])
    print(b.table(["setup", "n", "min ms", "median ms", "max ms", "refused total", "refused max"], rows))
    if sup and sup["http"]:
        base = medians[sup["mode"]]
        for label, median in medians.items():
            if label != sup["mode"]:
                refused = next(r[5] for r in rows if r[0] == label)
                met = "met" if base / median >= 10 and refused == 0 else "NOT met"
                print(f"{label}: kill->answer {base / median:.1f}x faster than supervisord (median), "
                      f"{refused} refused; goal >= 10x and 0 refused: {met}")
    for run in [*runs, *([sup] if sup else [])]:
        for f in run["failures"]:
            print(f"FAILED {run['mode']}: {f}")


if __name__ == "__main__":
    main()
