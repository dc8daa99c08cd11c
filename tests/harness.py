"""A real oraclewad on a temporary config, driven the way an operator (and systemd) would."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.system import (  # noqa: F401 (the tests import these from here)
    alive,
    children_of,
    drop_external,
    external_servers_reachable,
    free_port,
    oraclectl,
    write_daemon_config,
)
from tests.support.system import unique_id as _unique_id

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write_config(root: Path, *, backend: str = "embedded", extra: str = "", policy: str = "") -> Path:
    """A daemon config under root, restarting fast; backend "external" uses the machine's PostgreSQL
    and Redis."""
    fast = "backoff_initial = 0.1\nbackoff_max = 2.0\nstop_grace = 3.0\n"
    base = free_port_base()
    return write_daemon_config(root, backend=backend, port_range=(base, base + 199), policy=fast + policy,
                               extra=extra)


_PORT_BASE: list[int] = []


def free_port_base() -> int:
    """A per-process block of 200 ports, so parallel test runs rarely share a range; all below
    Linux's ephemeral range (32768+), where outgoing connections would take ports from us."""
    if not _PORT_BASE:
        _PORT_BASE.append(20000 + (os.getpid() % 60) * 200)
    return _PORT_BASE[0]


def write_tenant(root: Path, tenant_id: str, body: str = "") -> Path:
    path = root / "tenants.d" / f"{tenant_id}.toml"
    path.write_text(f'id = "{tenant_id}"\nname = "{tenant_id} Ltda"\nservices = "all"\n{body}')
    return path


@dataclass
class Daemon:
    root: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "oraclewad.sock"

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0,
              watchdog_usec: int = 3_000_000) -> Daemon:
        notify_path = self.root / f"systemd-notify-{time.monotonic_ns()}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": str(watchdog_usec)}
        env.pop("OWA_CONFIG", None)
        self.messages = []
        self.stderr_path = self.root / "daemon.stderr"
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen([str(BIN / "oraclewad"), "run", "--config", str(self.config)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=self.root)
        if wait_ready:
            self.wait_message("READY=1", timeout)
        return self

    def wait_message(self, wanted: str, timeout: float = 30.0) -> list[str]:
        """Read notify datagrams until one has the line `wanted`; every line is kept."""
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"daemon did not send {wanted} (exit {self.proc.poll()}); "
                                     f"stderr:\n{self.stderr()[-4000:]}")
            self.notify.settimeout(min(remaining, 0.5))
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().splitlines()
            self.messages += lines
            if wanted in lines:
                return lines

    def wait_message_containing(self, text: str, timeout: float = 30.0) -> str:
        """The first notify line (already received or new) that contains `text`."""
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.messages[seen:]:
                if text in line:
                    return line
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no notify line containing {text!r}: {self.messages[-20:]}")
            self.notify.settimeout(0.5)
            try:
                self.messages += self.notify.recv(4096).decode().splitlines()
            except TimeoutError:
                continue

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return oraclectl(self.socket_path, *args, timeout=timeout, check=check)

    def ctl_json(self, *args: str) -> object:
        return json.loads(self.ctl("--json", *args).stdout)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        if self.notify is not None:
            self.notify.close()
        self.proc = None
        return code


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def copy_example(root: Path, sandbox_url: str, sandbox_key: str) -> None:
    """The repo's example tenant under root, wired to a test sandbox as `make run` wires it to its own:
    the key file where the example names it (relative to the tenant file), the sandbox's URL."""
    text = (REPO / "tenants.d" / "imperio.toml").read_text()
    text = text.replace('"http://127.0.0.1:8085"', f'"{sandbox_url}"')
    (root / "tenants.d" / "imperio.toml").write_text(text)
    key = root / "keys" / "sandbox-evolution.key"   # tenants.d/../keys, as under var/
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(sandbox_key + "\n")
    key.chmod(0o600)


ISSUED_IDS: list[str] = []


def unique_id(prefix: str = "t") -> str:
    """Tenant ids unique per run: the machine's PostgreSQL is shared by every test run. Every id
    is remembered, so teardown can drop what it provisioned even if the tenant file is gone."""
    tenant_id = _unique_id(prefix)
    ISSUED_IDS.append(tenant_id)
    return tenant_id


def running_tenant(daemon: Daemon, prefix: str) -> str:
    """A new tenant (unique id from prefix) added with `oraclectl tenant add`, its services ready."""
    tenant_id = unique_id(prefix)
    daemon.ctl("tenant", "add", tenant_id, "--timeout", "90", timeout=120)
    return tenant_id


def tenant_ids(root: Path) -> list[str]:
    """Ids of every tenant file a daemon under root has seen (tenants.d and its .removed/ archive)."""
    return sorted({p.name.split(".")[0] for p in (root / "tenants.d").rglob("*.toml")})


@contextmanager
def running_daemon(root: Path, *, backend: str, extra: str = "", policy: str = "") -> Iterator[Daemon]:
    """A started daemon under root, stopped on exit; what it provisioned on external servers is dropped."""
    root.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(root, write_config(root, backend=backend, extra=extra, policy=policy))
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        if backend == "external":
            drop_external(tenant_ids(root))


@contextmanager
def control_daemon(root: Path, *, backend: str) -> Iterator[Daemon]:
    """running_daemon with TCP control on and a second installed release, 2.1.0 (this interpreter)."""
    release = root / "releases" / "2.1.0"
    release.mkdir(parents=True)
    (release / "release.toml").write_text(f'python = "{sys.executable}"\n')
    tcp = f'[control]\ntcp = "127.0.0.1:{free_port()}"\n'
    with running_daemon(root, backend=backend, extra=tcp) as daemon:
        yield daemon


def ctl_in_process(socket_path: Path, *argv: str, stdin: str | io.StringIO = "") -> tuple[int, str, str]:
    """oraclectl's main() in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from oraclectl.main import main

    out, err = io.StringIO(), io.StringIO()
    stdin_file = stdin if isinstance(stdin, io.StringIO) else io.StringIO(stdin)
    code = main(["--socket", str(socket_path), *argv], stdout=out, stderr=err, stdin=stdin_file)
    return code, out.getvalue(), err.getvalue()


def tcp_address(daemon: Daemon) -> str:
    """The daemon's [control] tcp address, as written by write_config(extra=...)."""
    for line in daemon.config.read_text().splitlines():
        if line.replace(" ", "").startswith('tcp="'):
            return line.split('"')[1]
    raise AssertionError(f"{daemon.config} has no [control] tcp")
