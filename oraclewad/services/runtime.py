"""Child bootstrap: every service process runs `run_service(...)` and gets the daemon contract for free.

Startup: config (fd OWA_CONFIG_FD, or file OWA_CONFIG) -> the clients (no I/O) and the app ->
side by side: Postgres connect + schema check, Redis PING, and the admin server on the inherited
"admin" fd (or OWA_ADMIN_SOCKET standalone) -> once both stores were reached, the public HTTP
server on the inherited "http" fd (or http.host/port standalone): not one request is served
before -> READY=1 -> WATCHDOG=1 from the trio loop. The connection pools start their threads at
their first use (services/pools.py), after READY=1, unless postgres.pool_min asks for
connections up front. SIGTERM/SIGINT: STOPPING=1, stop accepting, drain in-flight requests
(http.graceful_timeout_s), stop background tasks, close pools, exit 0. A second signal skips the drain.

Exit codes: 0 stopped on request; 1 bug (traceback on stderr); 69 Postgres/Redis unreachable at start;
70 the release lacks a part it needs; 71 cannot listen (port in use, bad admin socket path);
78 invalid config or environment, or database schema mismatch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer
from prometheus_client import CollectorRegistry, disable_created_metrics
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad import contract
from oraclewad.services import config as config_mod
from oraclewad.services import http1
from oraclewad.services.admin import Health, HttpMetrics, SchemaProbe, build_admin_app
from oraclewad.services.config import ConfigError, ServiceConfig
from oraclewad.services.context import ServiceContext
from oraclewad.services.evolution import EvolutionClient
from oraclewad.services.instances import InstanceStates, admin_routes
from oraclewad.services.logs import Redactor, channel_logger, redact_url, secrets_in, setup_logging
from oraclewad.services.notify import Notifier, check_unix_path, listen_fds, watchdog_interval

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool
    from redis import Redis
    from starlette.types import ASGIApp

EX_OK = contract.EX_OK
EX_UNAVAILABLE = contract.EX_UNAVAILABLE
EX_SOFTWARE = contract.EX_SOFTWARE
EX_OSERR = contract.EX_OSERR
EX_CONFIG = contract.EX_CONFIG

_CONNECT_TIMEOUT = 5
_CLOSE_TIMEOUT = 5.0
_ADMIN_GRACE = 1.0
_SWITCH_INTERVAL = sys.getswitchinterval()
_START_SWITCH_INTERVAL = 0.0005

T = TypeVar("T")
log = channel_logger("runtime")


class StartupFailure(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


BuildApp = Callable[[ServiceContext], "ASGIApp"]


def run_service(service: str, build_app: BuildApp, *, migrations: Path | None = None) -> NoReturn:
    """Entry point of `python -m oraclewad.services.<service>`; never returns.

    migrations: this service's NNNN_name.sql directory (default services/<service>/migrations).
    """
    sys.exit(main(service, build_app, migrations=migrations))


def main(service: str, build_app: BuildApp, *, migrations: Path | None = None,
         env: MutableMapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    static: dict[str, Any] = {"tenant": env.get(contract.ENV_TENANT, ""), "service": service}
    redact = Redactor()
    setup_logging(static, redact)
    try:
        passed = listen_fds(env, (contract.HTTP_FD_NAME, contract.ADMIN_FD_NAME))
        http_fd = passed.get(contract.HTTP_FD_NAME)
        cfg = config_mod.load(service, env, need_port=http_fd is None)
        redact.add(secrets_in(cfg.raw))
        static["tenant"] = cfg.tenant
        logging.getLogger().setLevel(cfg.log_level.upper())
        notifier = Notifier(env.get(contract.ENV_NOTIFY))
        interval = watchdog_interval(env)
        admin_path = env.get(contract.ENV_ADMIN_SOCKET) or None
        if admin_path:
            check_unix_path(contract.ENV_ADMIN_SOCKET, admin_path)
    except ConfigError as exc:
        return _refuse(exc.exit_code, str(exc))
    if contract.ADMIN_FD_NAME in passed:
        admin_path = f"fd://{passed[contract.ADMIN_FD_NAME]}"  # bound (and removed) by the daemon
    if not env.get(contract.ENV_CONFIG_FD) and os.stat(cfg.path).st_mode & 0o077:
        log.warning("config file is readable by other users: it holds credentials, chmod 600 it",
                    extra={"path": cfg.path})
    held = _HeldAccept() if env.get(contract.ENV_HOLD_ACCEPT) == "1" and admin_path else None
    plan = _Plan(cfg, build_app, migrations or Path(__file__).parent / service / "migrations",
                 http_fd, notifier, interval, admin_path, held)
    return trio.run(_amain, plan)


@dataclass
class _Plan:
    cfg: ServiceConfig
    build_app: BuildApp
    migrations: Path
    http_fd: int | None
    notifier: Notifier
    watchdog_interval: float
    admin_path: str | None
    hold_accept: _HeldAccept | None = None


def _refuse(code: int, message: str) -> int:
    # Both streams: stdout is the JSON log (combined.log), stderr is what an operator sees first.
    log.error(message, extra={"exit_code": code})
    print(message, file=sys.stderr, flush=True)
    return code


class _Stopper:
    """First SIGTERM/SIGINT: STOPPING=1 and a graceful stop; second: stop without draining."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.requested = trio.Event()
        self.startup_scope = trio.CancelScope()
        self.hard_scope: trio.CancelScope | None = None

    async def watch(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.requested.is_set():
                log.info("stopping", extra={"signal": name})
                # Informational only: when a whole fleet stops at once the daemon's queue is full,
                # and waiting the usual second for it would only delay the drain.
                await self.notifier.send("STOPPING=1", timeout=0.05)
                self.requested.set()
                self.startup_scope.cancel()
            else:
                log.warning("second signal: stopping without waiting for requests", extra={"signal": name})
                if self.hard_scope is not None:
                    self.hard_scope.cancel()


async def _amain(plan: _Plan) -> int:
    stopper = _Stopper(plan.notifier)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopper.watch, signals)
            try:
                return await _run(plan, stopper)
            finally:
                nursery.cancel_scope.cancel()
                plan.notifier.close()


async def _run(plan: _Plan, stopper: _Stopper) -> int:
    cfg = plan.cfg
    closers: list[Callable[[], None]] = []
    try:
        # The clients now (no I/O); reaching their servers (and the schema check) runs beside the
        # app's build and the admin server's start, and the public server waits for it (_serve).
        stores = _Stores(plan, closers)
        stores.check()
        # Until READY=1 the connect threads take the GIL within 0.5 ms of their socket's answer,
        # not the 5 ms the app's build holds it for, at each round trip of their handshakes.
        sys.setswitchinterval(_START_SWITCH_INTERVAL)
        pg, schema_probe, redis = stores.pool, stores.schema_probe, stores.redis

        ctx = ServiceContext(
            tenant=cfg.tenant, service=cfg.service, release=cfg.release, display_name=cfg.display_name,
            config=cfg.raw, pg=pg, redis=redis,
            redis_prefix=cfg.redis.prefix if cfg.redis else f"{cfg.tenant}:{cfg.service}:",
            metrics=_registry(cfg),
            limiter=trio.CapacityLimiter(cfg.postgres.pool_max if cfg.postgres else 1),
        )
        if cfg.evolution is not None:
            ctx.evolution = EvolutionClient(cfg.evolution.url, cfg.evolution.api_key,
                                            api_version=cfg.evolution.api_version)
            ctx.instances = InstanceStates(cfg.instances, ctx.evolution, registry=ctx.metrics)
            ctx.start_soon(ctx.instances.poll_forever)
            ctx.health_checks["instances"] = ctx.instances.health
            ctx.admin_routes.extend(admin_routes(ctx))
        try:
            app = plan.build_app(ctx)
            # A service that names its hot routes gets the lean HTTP/1.1 server (services/http1.py)
            # on its public port instead of hypercorn.
            lean = getattr(getattr(app, "state", None), "http1_routes", None)
            await _serve(plan, stopper, ctx, HttpMetrics(app, ctx.metrics), Health(ctx, schema_probe), stores,
                         lean)
        finally:
            if ctx.evolution is not None:
                with trio.CancelScope(shield=True):
                    await ctx.evolution.aclose()
        if not stores.done:
            log.info("stopped before ready")
        else:
            log.info("stopped")
        return EX_OK
    except StartupFailure as exc:
        return _refuse(exc.exit_code, str(exc))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close_all, closers)


class _Stores:
    """PostgreSQL (connect, schema check) and Redis (PING), checked side by side: each is mostly
    a wait on its server. The first failure is the one reported, at once: the other attempt is
    abandoned (the process exits), so a dead server is never hidden behind the other one's
    connect timeout. The clients exist from the start (pools open at their first use)."""

    def __init__(self, plan: _Plan, closers: list[Callable[[], None]]) -> None:
        cfg = plan.cfg
        self.cfg = cfg
        self.migrations = plan.migrations
        self.pool: ConnectionPool | None = None
        self.schema_probe: SchemaProbe | None = None
        self.redis: Redis | None = None
        self.done = False
        self._checked = trio.Event()
        self._failure: StartupFailure | None = None
        self._bug: Exception | None = None
        self._pending = 0
        if cfg.postgres is not None:
            self.pool, self.schema_probe, self._wanted = _postgres_pool(cfg, plan.migrations)
            closers.append(partial(self.pool.close, timeout=_CLOSE_TIMEOUT))
        if cfg.redis is not None:
            self.redis = _redis_client(cfg)
            closers.append(self.redis.close)

    def check(self) -> None:
        """Start reaching both, each in a thread of its own at once (before the app is built; a
        trio task would only start at the next checkpoint). passed() waits for the outcome."""
        token = trio.lowlevel.current_trio_token()
        jobs = []
        if self.pool is not None:
            jobs.append(partial(_check_postgres, self.cfg, self.pool, self._wanted))
        if self.redis is not None:
            jobs.append(partial(_check_redis, self.cfg, self.redis))
        self._pending = len(jobs)
        if not jobs:
            self._settle()

        def deliver(result: Any) -> None:   # an outcome.Outcome
            with contextlib.suppress(trio.RunFinishedError):    # the process is stopping
                token.run_sync_soon(self._arrived, result)
        for job in jobs:
            trio.lowlevel.start_thread_soon(job, deliver)

    def _arrived(self, result: Any) -> None:
        self._pending -= 1
        try:
            result.unwrap()
        except StartupFailure as exc:
            self._failure = self._failure or exc    # the first one; the other is not waited for
        except Exception as exc:
            self._bug = self._bug or exc
        if self._pending == 0 or self._failure is not None or self._bug is not None:
            self._settle()

    def _settle(self) -> None:
        self.done = self._failure is None and self._bug is None
        self._checked.set()

    @property
    def failure(self) -> StartupFailure | None:
        return self._failure

    async def passed(self, stopper: _Stopper) -> bool:
        """Until both were reached (True), one could not be (failure says why) or a stop came."""
        with stopper.startup_scope:
            await self._checked.wait()
        if self._bug is not None:
            raise self._bug         # a bug, not an unreachable store: its traceback
        return self._failure is None and not stopper.requested.is_set()


async def _serve(plan: _Plan, stopper: _Stopper, ctx: ServiceContext, public_app: HttpMetrics,
                 health: Health, stores: _Stores, lean: dict[tuple[str, str], http1.Route] | None = None
                 ) -> None:
    cfg = plan.cfg
    public_bind = _public_bind(plan)
    public_done = trio.Event()
    admin_stop = trio.Event()
    admin_done = trio.Event()
    failure: StartupFailure | None = None
    held = plan.hold_accept
    if held is not None:
        ctx.admin_routes.append(Route(contract.ADMIN_ACCEPT_PATH, held.endpoint, methods=["POST"]))

    async def run_public(task_status: trio.TaskStatus[list[str]]) -> None:
        if lean is not None:
            server = http1.Http1Server(public_app, lean, metrics=public_app,
                                       graceful_timeout=cfg.graceful_timeout)
            await _serve_public_http1(server, public_bind, stopper, held, task_status)
        else:
            config = _hypercorn_config(public_bind, cfg.graceful_timeout)
            await _serve_public(public_app, config, stopper, held, task_status)
        public_done.set()

    async with trio.open_nursery() as servers:
        stopper.hard_scope = servers.cancel_scope
        binds: list[str] = []
        cannot: dict[str, BaseException] = {}     # where -> why it cannot listen there

        async def start(where: str, *args: Any) -> Any:
            try:
                return await servers.start(*args)
            except* OSError as group:  # hypercorn raises bind errors from inside its own nursery
                cannot[where] = _first_leaf(group)
            return None

        async def start_public() -> None:
            # Not one request before its stores are reached and the schema is the right one.
            if await stores.passed(stopper):
                binds.extend(await start(public_bind, run_public) or ())

        # The stores' checks and both servers side by side (each server runs the app's lifespan
        # startup first; the public one starts once the checks passed).
        async with trio.open_nursery() as starting:
            starting.start_soon(start_public)
            if plan.admin_path:
                admin_app = build_admin_app(health, ctx.metrics, ctx.admin_routes)
                starting.start_soon(start, f"unix:{plan.admin_path}", _run_admin, admin_app,
                                    plan.admin_path, admin_stop, admin_done)
            else:
                admin_done.set()
        admin_inode = None
        admin_where = f"unix:{plan.admin_path}"
        if plan.admin_path and admin_where not in cannot and not plan.admin_path.startswith("fd://"):
            try:
                os.chmod(plan.admin_path, 0o600)
                admin_inode = os.stat(plan.admin_path).st_ino
            except OSError as exc:
                cannot[admin_where] = exc
        failure = _start_failure(stores.failure, cannot, public_bind)
        if failure is not None or not binds:    # not binds: stopped before the checks passed
            _unlink_if_ours(plan.admin_path, admin_inode)   # nothing of ours will serve
            servers.cancel_scope.cancel()
        else:
            await _announce_ready(plan, stopper, ctx, binds)
            sys.setswitchinterval(_SWITCH_INTERVAL)
            if plan.notifier.enabled:
                servers.start_soon(_watchdog, plan.notifier, plan.watchdog_interval)
                servers.start_soon(_report_health, plan.notifier, health)
            async with trio.open_nursery() as background:
                ctx.start_background(background)
                await public_done.wait()  # stop requested and in-flight requests drained
                background.cancel_scope.cancel()
            admin_stop.set()
            await admin_done.wait()
            _unlink_if_ours(plan.admin_path, admin_inode)
            servers.cancel_scope.cancel()  # the watchdog
    if failure is not None:
        raise failure


def _start_failure(unreachable: StartupFailure | None, cannot: dict[str, BaseException],
                   public_bind: str) -> StartupFailure | None:
    """Why the start failed: a store that cannot be reached, else a place it cannot listen on."""
    if unreachable is not None or not cannot:
        return unreachable
    where, exc = min(cannot.items(), key=lambda item: item[0] != public_bind)  # public first
    why = getattr(exc, "strerror", None) or exc
    return StartupFailure(EX_OSERR, f"http: cannot listen on {where}: {why}")


async def _run_admin(app: ASGIApp, path: str, stop: trio.Event, done: trio.Event,
                     task_status: trio.TaskStatus[list[str]]) -> None:
    # Created 0600 (umask), never reachable from the network; it outlives the public server's
    # drain so /healthz and /metrics keep answering while requests finish.
    bind = path if path.startswith("fd://") else f"unix:{path}"
    config = _hypercorn_config(bind, _ADMIN_GRACE, umask=0o177)
    await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status, mode="asgi")
    done.set()


def _public_bind(plan: _Plan) -> str:
    if plan.http_fd is not None:
        return f"fd://{plan.http_fd}"
    host = plan.cfg.http_host
    return f"{f'[{host}]' if ':' in host else host}:{plan.cfg.http_port}"


async def _announce_ready(plan: _Plan, stopper: _Stopper, ctx: ServiceContext, binds: list[str]) -> None:
    # READY=1 is sent once; a full notify queue must delay it, never lose it (the supervisor
    # would kill us at the start deadline).
    while (plan.notifier.enabled and not stopper.requested.is_set()
           and not await plan.notifier.send("READY=1")):
        await trio.sleep(0.2)
    cfg = plan.cfg
    log.info("ready", extra={"http": binds, "admin_socket": plan.admin_path,
                             "release": ctx.release, "pid": os.getpid(),
                             "postgres": redact_url(cfg.postgres.dsn) if cfg.postgres else None,
                             "redis": redact_url(cfg.redis.url) if cfg.redis else None,
                             "unknown_config_keys": list(cfg.unknown_keys) or None})


async def _serve_public(app: ASGIApp, config: HypercornConfig, stopper: _Stopper, held: _HeldAccept | None,
                        task_status: trio.TaskStatus[list[str]]) -> None:
    if held is None:
        await serve(app, config, shutdown_trigger=stopper.requested.wait, task_status=task_status,
                    mode="asgi")
        return
    # A swap's new process: nothing is accepted from the shared socket until the daemon promotes it.
    task_status.started(list(config.bind))
    await _first_of(held.release.wait, stopper.requested.wait)
    if not stopper.requested.is_set():
        log.info("accepting on the shared socket (promoted)")
        await serve(app, config, shutdown_trigger=stopper.requested.wait, mode="asgi",
                    task_status=held)  # type: ignore[arg-type]


async def _serve_public_http1(server: http1.Http1Server, bind: str, stopper: _Stopper,
                              held: _HeldAccept | None, task_status: trio.TaskStatus[list[str]]) -> None:
    sockets = http1.listening_sockets(bind)   # OSError: exit 71, as hypercorn's bind errors
    if held is None:
        await server.serve(sockets, stopper.requested.wait, task_status=task_status)
        return
    # A swap's new process: nothing is accepted from the shared socket until the daemon promotes it.
    task_status.started([bind])
    await _first_of(held.release.wait, stopper.requested.wait)
    if stopper.requested.is_set():
        for sock in sockets:
            sock.close()
        return
    log.info("accepting on the shared socket (promoted)")
    await server.serve(sockets, stopper.requested.wait, task_status=held)


class _HeldAccept:
    """The public server of a swap's new process, waiting for the daemon's go (contract.ENV_HOLD_ACCEPT)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self._listening = trio.Event()

    def started(self, value: object = None) -> None:  # it is serve()'s task_status
        self._listening.set()

    async def endpoint(self, request: Request) -> Response:
        self.release.set()
        with trio.move_on_after(5):
            await self._listening.wait()
        return JSONResponse({"accepting": self._listening.is_set()},
                            status_code=200 if self._listening.is_set() else 503)


async def _first_of(*waits: Callable[[], Any]) -> None:
    async with trio.open_nursery() as nursery:
        async def run(fn: Callable[[], Any]) -> None:
            await fn()
            nursery.cancel_scope.cancel()
        for fn in waits:
            nursery.start_soon(run, fn)


# How long an idle connection may still send its request once the drain began (the lean server's too).
IDLE_GRACE = http1.IDLE_GRACE


async def _idle_timeout_with_grace(self: TCPServer) -> None:
    """hypercorn closes idle connections the moment a graceful stop begins, and a connection it has
    just accepted counts as idle until its request bytes arrive. During a release swap the old and
    new processes accept from one socket, so that would drop a client who connected a millisecond
    before the old process stopped accepting. Give an idle connection until IDLE_GRACE after it
    became idle (accepted, or its last answer sent) to start a request (it is then served, with
    Connection: close) before closing it. Counted from then, not from the stop: a connection idle
    for longer is closed at once, so the drain ends as soon as the requests in flight are answered
    instead of always waiting the grace."""
    idle_since = trio.current_time()
    with trio.move_on_after(self.config.keep_alive_timeout):
        await self.context.terminated.wait()
    if self.context.terminated.is_set() and not getattr(self, "_owa_peer_gone", False):
        # A request arriving now cancels this task (idle=False) and is served.
        await trio.sleep_until(idle_since + IDLE_GRACE)
    with trio.CancelScope(shield=True):
        await self._initiate_server_close()


_read_data = TCPServer._read_data


async def _read_data_then_end_idle(self: TCPServer) -> None:
    """A connection whose client has closed its side can send no request: end its idle wait. By
    itself hypercorn keeps it waiting until keep_alive_timeout (or a stop: then the grace above),
    so every client that had just hung up made a stopping process wait IDLE_GRACE."""
    try:
        await _read_data(self)
    finally:
        self._owa_peer_gone = True  # type: ignore[attr-defined]
        with trio.CancelScope(shield=True):
            await self.idle_task.stop()


if all(hasattr(TCPServer, n) for n in ("_idle_timeout", "_initiate_server_close", "_read_data")):
    TCPServer._idle_timeout = _idle_timeout_with_grace  # type: ignore[method-assign]
    TCPServer._read_data = _read_data_then_end_idle  # type: ignore[method-assign]


def _hypercorn_config(bind: str, graceful_timeout: float, umask: int | None = None) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [bind]
    config.graceful_timeout = graceful_timeout
    config.umask = umask
    config.accesslog = None  # HttpMetrics writes the access lines
    config.errorlog = logging.getLogger("hypercorn.error")  # a Logger: hypercorn uses it as is
    config.include_server_header = False
    return config


async def _watchdog(notifier: Notifier, interval: float) -> None:
    # From the trio loop itself: a blocked loop stops the pings and the daemon restarts us.
    while True:
        await trio.sleep(interval)
        await notifier.send("WATCHDOG=1")


async def _report_health(notifier: Notifier, health: Health,
                         interval: float = contract.HEALTH_INTERVAL) -> None:
    """Re-run the readiness checks and tell the daemon whenever the outcome changes, so a
    service whose database went away is shown unhealthy instead of running."""
    reported: tuple[str, str] | None = (contract.HEALTH_OK, "")   # READY=1 implied ok
    while True:
        await trio.sleep(interval)
        _, body = await health.snapshot()
        failing = [f"{name}: {check.get('detail', '')}" for name, check in sorted(body["checks"].items())
                   if not check.get("ok")]
        outcome = (contract.HEALTH_UNHEALTHY, "; ".join(failing)) if failing else (contract.HEALTH_OK, "")
        # The failing checks by name decide "changed": a detail that varies (a latency, a pid in
        # an error text) must not send a datagram every interval.
        key = (outcome[0], ",".join(sorted(n for n, c in body["checks"].items() if not c.get("ok"))))
        if key == reported:
            continue
        message = f"{contract.HEALTH}={outcome[0]}"
        if outcome[1]:
            message += f"\n{contract.HEALTH_CHECK}={' '.join(outcome[1].split())[:1000]}"
        if await notifier.send(message):
            reported = key
            log.log(logging.WARNING if failing else logging.INFO, "health changed",
                    extra={"health": outcome[0], "failing": outcome[1] or None})


def _registry(cfg: ServiceConfig) -> CollectorRegistry:
    """The service's own metrics. The daemon scrapes them over the admin socket and adds the
    tenant, service and release labels; it reads memory and CPU from /proc itself (that works
    for a hung child too), so there is no process collector here."""
    disable_created_metrics()  # *_created series per child add nothing the daemon's scrape uses
    return CollectorRegistry()


def _postgres_pool(cfg: ServiceConfig, migrations_dir: Path
                   ) -> tuple[ConnectionPool, SchemaProbe, list[Any]]:
    """The service's pool (opened by its first request, pools.py), the schema probe of /healthz
    and the migrations this release wants: no I/O but reading the migration files."""

    from oraclewad.services.pools import OpenOnUse

    try:
        from oraclewad import migrations
    except ImportError as exc:
        raise StartupFailure(EX_SOFTWARE,
                             f"schema: this release lacks oraclewad.migrations ({exc})") from None
    assert cfg.postgres is not None
    wanted = migrations.discover(migrations_dir)

    def schema_probe(conn: Any) -> str:
        migrations.check(conn, wanted)
        return f"at version {migrations.current_version(conn)}"

    pool = OpenOnUse(
        cfg.postgres.dsn, min_size=cfg.postgres.pool_min, max_size=cfg.postgres.pool_max,
        kwargs=_connect_kwargs(cfg.postgres.dsn), timeout=10.0, check=OpenOnUse.check_unless_fresh,
        name=f"{cfg.tenant}_{cfg.service}",
    )
    return pool, schema_probe, wanted


def _connect_kwargs(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    return {} if "connect_timeout" in conninfo_to_dict(dsn) else {"connect_timeout": _CONNECT_TIMEOUT}


def _check_postgres(cfg: ServiceConfig, pool: ConnectionPool, wanted: list[Any]) -> None:
    """Connect and check the schema (StartupFailure otherwise); the pool's connections up front
    when postgres.pool_min asks for them."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from oraclewad import migrations

    assert cfg.postgres is not None
    dsn = cfg.postgres.dsn
    params = conninfo_to_dict(dsn)
    where = (f"{params.get('host') or 'local socket'}:{params.get('port') or 5432}"
             f" (database {params.get('dbname') or '?'}, user {params.get('user') or '?'})")
    try:
        conn = psycopg.connect(dsn, autocommit=True, **_connect_kwargs(dsn))
    except psycopg.Error as exc:
        raise StartupFailure(EX_UNAVAILABLE, f"postgres: cannot connect to {where}: {_squash(exc)}") from None
    with conn:
        try:
            migrations.check(conn, wanted)
        except migrations.SchemaMismatch as exc:
            raise StartupFailure(EX_CONFIG, f"schema: database at {where}: {_squash(exc)}") from None
    if cfg.postgres.pool_min > 0:
        pool.open(wait=True, timeout=10.0)
    log.info("postgres ready", extra={"postgres": redact_url(dsn), "schema": len(wanted)})


def _redis_client(cfg: ServiceConfig) -> Redis:
    import redis

    assert cfg.redis is not None
    rc = cfg.redis
    kwargs: dict[str, Any] = {"socket_connect_timeout": _CONNECT_TIMEOUT, "socket_timeout": _CONNECT_TIMEOUT,
                              "health_check_interval": 30, "driver_info": None}  # no CLIENT SETINFO
    if rc.username is not None:
        kwargs["username"] = rc.username
    if rc.password is not None:
        kwargs["password"] = rc.password
    # The daemon's [redis] TLS files: a rediss:// server signed by a private CA, or one that
    # wants a client certificate, is reached as the daemon reaches it.
    for key, value in (("ssl_ca_certs", rc.ca_file), ("ssl_certfile", rc.cert_file),
                       ("ssl_keyfile", rc.key_file)):
        if value is not None:
            kwargs[key] = value
    return redis.Redis.from_url(rc.url, **kwargs)


def _check_redis(cfg: ServiceConfig, client: Redis) -> None:
    import redis

    assert cfg.redis is not None
    rc = cfg.redis
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StartupFailure(EX_UNAVAILABLE,
                             f"redis: cannot use {redact_url(rc.url)} as user {rc.username or 'default'}: "
                             f"{_squash(exc)}") from None
    log.info("redis ready", extra={"redis": redact_url(rc.url), "prefix": rc.prefix})


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _squash(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _close_all(closers: list[Callable[[], None]]) -> None:
    for close in reversed(closers):
        try:
            close()
        except Exception:
            log.exception("error while closing")


def _unlink_if_ours(path: str | None, inode: int | None) -> None:
    # During a release swap the successor may already have replaced the socket file: leave it.
    if path is None or inode is None:
        return      # none, or not a file of ours (an inherited socket)
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass
