"""Shared bits of the bench scripts: a real oraclewad on a temp config, cleanup, /proc figures, tables.

Not a bench itself (it lives in a folder, so `make bench`'s `bench/*.py` loop skips it). Modeled on
tests/harness.py, with two differences that matter for benchmarks: the daemon runs in its own
session (Ctrl-C reaches the bench, which then stops the daemon in order), and every process the
bench started is tracked by pid and start time so cleanup can end exactly those, even after a
daemon crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


def ensure_venv() -> None:
    """`python bench/x.py` with any interpreter: re-exec under the repo's venv when it exists."""
    venv_python = VENV_BIN / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


ensure_venv()

# The machine (/proc, ports, its PostgreSQL and Redis): one copy, shared with the tests.
from tests.support.system import (  # noqa: E402, F401 (after ensure_venv; the scripts use them as b.NAME)
    EXTERNAL_PG,
    EXTERNAL_REDIS,
    alive,
    children_of,
    descendants,
    drop_external,
    external_servers_reachable,
    free_port,
    oraclectl,
    start_time,
    stat_fields,
    stop_process,
    unique_id,
    write_daemon_config,
)

BIN = Path(sys.executable).parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- cleanup ---------------------------------------------------------------------------------

class Cleanup:
    """LIFO cleanup actions, run on normal exit, exceptions, Ctrl-C, SIGTERM and SIGHUP."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self.actions.append((what, action))

    def run(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        try:
            while self.actions:
                what, action = self.actions.pop()
                try:
                    action()
                except Exception as e:  # keep cleaning: one failure must not leak the rest
                    print(f"cleanup: {what} failed: {e.__class__.__name__}: {e}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, old)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def bench_session(name: str) -> Iterator[tuple[Path, Cleanup]]:
    """A temp root (removed at the end) and a Cleanup; SIGTERM/SIGHUP behave like Ctrl-C."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    cleanup = Cleanup()
    # Short path: unix socket paths (run/admin/<tenant>-<service>.sock) must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix=f"owa-{name}-", dir="/tmp"))
    cleanup.push(f"remove {root}", lambda: shutil.rmtree(root, ignore_errors=True))
    try:
        yield root, cleanup
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'SIGINT'}): cleaning up", file=sys.stderr)
        cleanup.run()
        sys.exit(130)
    finally:
        cleanup.run()


# ---- processes -------------------------------------------------------------------------------

class Tracked:
    """Pids we started (directly or through a supervisor), identified by pid + start time."""

    def __init__(self) -> None:
        self.known: dict[int, int] = {}

    def add(self, pids: Sequence[int]) -> None:
        for pid in pids:
            st = start_time(pid)
            if st is not None:
                self.known.setdefault(pid, st)

    def kill_leftovers(self) -> list[int]:
        killed = []
        for pid, st in self.known.items():
            if start_time(pid) == st and alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed


def cpu_ticks(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else None  # utime + stime (all threads)


def _proc_figure(pid: int, file: str, key: str) -> int | None:
    """The number after `key` in /proc/PID/<file> (kB for the memory lines), None once gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return None


def rss_kib(pid: int) -> int | None:
    return _proc_figure(pid, "status", "VmRSS:")


def pss_kib(pid: int) -> int | None:
    return _proc_figure(pid, "smaps_rollup", "Pss:")


def threads(pid: int) -> int | None:
    return _proc_figure(pid, "status", "Threads:")


def start_supervisord(root: Path, conf: Path,
                      tracked: Tracked) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    """supervisord -c conf in its own session (stderr in root/supervisord.stderr), and its stop:
    SIGTERM, then whatever of its tree is left is killed and counted."""
    with open(root / "supervisord.stderr", "wb") as stderr:
        proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    tracked.add([proc.pid])

    def stop() -> None:
        if proc.poll() is None:
            tracked.add(descendants(proc.pid))
        stop_process(proc, 60)
        time.sleep(0.2)
        left = tracked.kill_leftovers()
        if left:
            print(f"cleanup: killed {len(left)} leftover processes of supervisord", file=sys.stderr)

    return proc, stop


def scratch_database(admin: str, prefix: str, migrations_dir: Path) -> tuple[str, Callable[[], None]]:
    """A new database (prefix + random) on the server `admin` reaches, migrated from migrations_dir:
    its DSN, and how to drop it (push that onto the cleanup)."""
    import psycopg
    from psycopg import sql

    from oraclewad import migrations

    name = prefix + secrets.token_hex(4)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
    try:
        with psycopg.connect(dsn) as conn:
            migrations.apply(conn, migrations.discover(migrations_dir))
    except BaseException:
        drop()
        raise
    return dsn, drop


def backend_arg(parser: Any) -> None:
    """--backend auto|external|embedded; read it back with backend_of(args)."""
    parser.add_argument("--backend", choices=("auto", "external", "embedded"), default="auto",
                        help="the machine's data servers (external), embedded ones, or auto")


def backend_of(args: Any) -> str:
    if args.backend != "auto":
        return str(args.backend)
    return "external" if external_servers_reachable() else "embedded"


# ---- ports, servers --------------------------------------------------------------------------

def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int) -> int:
    """First port of `size` consecutive bindable loopback ports, in 10000-32767: below Linux's
    ephemeral range, where the children's own outgoing connections (to PostgreSQL, Redis) would
    take ports from the block between the check and the bind."""
    low, high = 10000, 32768
    start = low + (os.getpid() * 7919) % (high - low - size)
    for attempt in range(60):
        base = low + (start - low + attempt * (size + 17)) % (high - low - size)
        if all(_bindable(p) for p in range(base, base + size)):
            return base
    raise RuntimeError(f"no block of {size} free ports on 127.0.0.1")


# ---- the daemon ------------------------------------------------------------------------------

def write_config(root: Path, *, backend: str, port_base: int, port_count: int, extra: str = "",
                 policy: str = "") -> Path:
    """A daemon config under root, default policy unless `policy` overrides keys."""
    return write_daemon_config(root, backend=backend, port_range=(port_base, port_base + port_count - 1),
                               policy=policy, extra=extra)


def write_tenant(root: Path, tenant_id: str, services: str = '"all"', body: str = "") -> Path:
    path = root / "tenants.d" / f"{tenant_id}.toml"
    path.write_text(f'id = "{tenant_id}"\nname = "{tenant_id} Ltda"\nservices = {services}\n{body}')
    return path


class Daemon:
    """`oraclewad run` in its own session, with a NOTIFY_SOCKET we read, stopped in order at cleanup."""

    def __init__(self, root: Path, config: Path, cleanup: Cleanup) -> None:
        self.root, self.config, self.cleanup = root, config, cleanup
        self.proc: subprocess.Popen[bytes] | None = None
        self.tracked = Tracked()
        self.messages: list[str] = []
        self._ready = threading.Event()
        self._notify: socket.socket | None = None
        self._channel: Any = None
        self._stub: Any = None

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "oraclewad.sock"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> Daemon:
        notify_path = self.root / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        threading.Thread(target=self._read_notify, daemon=True).start()
        # WATCHDOG_USEC as systemd would set it for the unit (WatchdogSec=30): the daemon pings.
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "30000000"}
        for key in ("OWA_CONFIG", "OWA_SOCKET"):
            env.pop(key, None)
        self.stderr_path = self.root / "daemon.stderr"
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen([str(BIN / "oraclewad"), "run", "--config", str(self.config)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=self.root,
                                         start_new_session=True)
        self.tracked.add([self.proc.pid])
        self.cleanup.push(f"stop oraclewad {self.proc.pid}", self.stop)
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            self.tracked.add(descendants(self.proc.pid))
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"oraclewad did not send READY=1 (exit {self.proc.poll()}); "
                                   f"stderr tail:\n{self.stderr()[-3000:]}")
        self.track_descendants()
        return self

    def _read_notify(self) -> None:
        sock = self._notify
        while sock is not None:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            lines = data.decode(errors="replace").splitlines()
            self.messages += lines
            if "READY=1" in lines:
                self._ready.set()

    def track_descendants(self) -> list[int]:
        pids = descendants(self.pid)
        self.tracked.add(pids)
        return pids

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def ctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return oraclectl(self.socket_path, *args, timeout=timeout, check=check)

    def status(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """What `oraclectl --json status [ID]` prints, fetched in-process over one persistent channel:
        polling with the CLI would cost ~0.25 s of CPU per poll, stolen from children starting up."""
        import grpc

        from oraclectl import render
        from oraclewad._proto.oraclewa.v1 import control_pb2 as pb
        from oraclewad._proto.oraclewa.v1 import control_pb2_grpc as pb_grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket_path}")
            self._stub = pb_grpc.ControlStub(self._channel)
        try:
            response = self._stub.Status(pb.StatusRequest(tenant=tenant or ""), timeout=30)
        except grpc.RpcError as e:
            raise RuntimeError(f"Status RPC failed: {e.code().name}: {e.details()}") from None
        return [render.to_dict(s) for s in response.services]

    def notify_drops(self) -> dict[str, int]:
        """sd_notify datagrams the children logged as lost (full notify queue), by message:
        {"READY=1": 3, "STOPPING=1": 40, ...}."""
        drops: dict[str, int] = {}
        for path in (self.root / "log").glob("*/*/combined.log"):
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if '"notify timed out' in line or '"notify failed' in line:
                        with contextlib.suppress(ValueError):
                            what = json.loads(line).get("notify", "?")
                            drops[what] = drops.get(what, 0) + 1
        return drops

    @staticmethod
    def drops_text(drops: dict[str, int]) -> str:
        return ", ".join(f"{n} x {what}" for what, n in sorted(drops.items())) or "none"

    def warnings(self) -> dict[str, int]:
        """The daemon's WARNING/ERROR log lines, counted by kind (names, pids and numbers elided)."""
        kinds: dict[str, int] = {}
        for line in self.stderr().splitlines():
            if line.startswith(("WARNING", "ERROR", "CRITICAL")):
                text = re.sub(r"^(\w+) [\w.]+: (\S+/\S+: )?(pid \d+ )?", r"\1 ", line)
                text = re.sub(r"(?<![=\w])\d+(\.\d+)?", "N", text)[:120]
                kinds[text] = kinds.get(text, 0) + 1
        return kinds

    def wait_all_ready(self, count: int, timeout: float, *, what: str = "services",
                       strict: bool = True, stall: float | None = None) -> list[dict[str, Any]]:
        """Poll status until `count` services are running and ready; on timeout raise (strict) or
        return the last rows. `stall`: also give up when the number ready has not grown for that long
        (a READY=1 the daemon never received will not arrive later)."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        best, best_at = -1, time.monotonic()
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                rows = self.status()
                ready = sum(1 for r in rows if r.get("ready") and r.get("state") == "running")
                if len(rows) >= count and ready == len(rows):
                    self.track_descendants()
                    return rows
                if ready > best:
                    best, best_at = ready, time.monotonic()
                elif stall is not None and best > 0 and time.monotonic() - best_at > stall:
                    break
            time.sleep(0.5)
        if not strict:
            self.track_descendants()
            return rows
        states: dict[str, int] = {}
        for r in rows:
            states[r.get("state", "?")] = states.get(r.get("state", "?"), 0) + 1
        raise RuntimeError(f"{what}: not all {count} ready after {timeout:g}s: {states}; "
                           f"daemon stderr tail:\n{self.stderr()[-2000:]}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.track_descendants()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"oraclewad {self.proc.pid} still running {timeout:g}s after SIGTERM: SIGKILL",
                      file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)
        leftovers = self.tracked.kill_leftovers()
        if leftovers:
            print(f"cleanup: killed {len(leftovers)} leftover processes of oraclewad: {leftovers}",
                  file=sys.stderr)
        if self._notify is not None:
            sock, self._notify = self._notify, None
            sock.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.proc = None


# ---- figures ---------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "p90": percentile(values, 90), "p99": percentile(values, 99), "max": max(values)}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """Aligned text table: first column left, the others right; floats with `digits` decimals."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.{digits}f}"
        return "n/a" if v is None else str(v)

    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    # Text columns (those whose cells are all strings) align left, figures right.
    left = [all(isinstance(row[i], str) for row in rows) for i in range(len(headers))]
    def line(values: Sequence[str]) -> str:
        padded = (v.ljust(w) if lf else v.rjust(w) for v, w, lf in zip(values, widths, left, strict=True))
        return "  ".join(padded).rstrip()
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def header(title: str, notes: Sequence[str] = ()) -> None:
    print(f"== {title}")
    for note in notes:
        print(f"   {note}")
    sys.stdout.flush()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
