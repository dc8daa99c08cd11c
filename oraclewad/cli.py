"""`oraclewad [run|check] [--config FILE]`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import trio

from oraclewad import contract
from oraclewad.errors import OracleError, Problem
from oraclewad.secretfiles import secret_file_problem
from oraclewad.settings import DEFAULT_CONFIG_PATHS, Settings, find_config, load_settings
from oraclewad.tenants.ids import id_key
from oraclewad.tenants.loader import load_tenants
from oraclewad.tenants.ports import PortBook, ephemeral_overlap

EPILOG = """examples:
  oraclewad                         run with ./oraclewad.toml (or $OWA_CONFIG, /etc/oraclewa/oraclewad.toml)
  oraclewad run --config /etc/oraclewa/oraclewad.toml
  oraclewad check                   validate the config and every tenant file, then exit
"""


def check(settings: Settings) -> list[Problem]:
    """Every problem of the config's tenants, ports and secret files included; writes nothing."""
    book = PortBook(settings.state_dir / "ports.json", settings.port_range, settings.bind_host)
    loaded = load_tenants(settings.tenants_dir, settings.policy, book.tenants(),
                          follow_symlinks=settings.tenant_symlinks)
    reserved = [p.port for p in settings.programs if p.port]
    _, port_problems = book.assign(loaded.tenants, reserved, persist=False)
    problems = loaded.problems + port_problems
    for tenant in loaded.tenants.values():
        key_file = tenant.evolution.api_key_file
        own = settings.secrets_dir / f"{id_key(tenant.id)}.evolution.key"
        if key_file is None or not os.path.lexists(key_file):
            continue    # not made yet (`make run` makes the sandbox's): warnings() says so
        if (why := secret_file_problem(key_file, state_dir=settings.state_dir, own=[own])) is not None:
            problems.append(Problem(str(tenant.source), "evolution.api_key_file", why))
    return problems


def warnings(settings: Settings) -> list[str]:
    """What is allowed but unsafe: ports, tenant users, servers open to a rogue tenant."""
    found = []
    if (warning := ephemeral_overlap(settings.port_range)) is not None:
        found.append(f"{settings.path}: {warning}")
    from oraclewad.provision.audit import open_server_warnings
    from oraclewad.provision.servers import RedisParams

    redis = None
    if settings.redis.url:
        try:
            redis = RedisParams.from_url(settings.redis.url, settings.redis.ca_file,
                                         settings.redis.cert_file, settings.redis.key_file)
        except OracleError:
            redis = None
    found += open_server_warnings(settings, settings.postgres.dsn, redis)
    for tenant in load_tenants(settings.tenants_dir, settings.policy,
                               follow_symlinks=settings.tenant_symlinks).tenants.values():
        key_file = tenant.evolution.api_key_file
        if key_file is not None and not os.path.lexists(key_file):
            found.append(f"{tenant.source}: evolution.api_key_file: {key_file} does not exist yet; "
                         "the tenant will not start until it does (mode 0600)")
    return found


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("oraclewa")
    except PackageNotFoundError:     # a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oraclewad", description="OracleWA supervisor daemon",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"oraclewad {_version()}")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "check"])
    parser.add_argument("--config", metavar="FILE", help="daemon config (default: $OWA_CONFIG, "
                        "./oraclewad.toml, /etc/oraclewa/oraclewad.toml)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    # pgserver narrates every pg_ctl call at INFO; the daemon reports what matters itself.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # httpx logs each request at INFO: every health probe, scrape and relayed call to a child
    # would fill the journal; failures are reported by the daemon with their tenant and service.
    if args.log_level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)
    path = find_config(args.config)
    if not path.exists() and not args.config and not os.environ.get(contract.ENV_CONFIG):
        looked = ", ".join(str(p.absolute()) for p in DEFAULT_CONFIG_PATHS)
        print(f"oraclewad: no config found: pass --config FILE or set $OWA_CONFIG "
              f"(looked for {looked})", file=sys.stderr)
        return 2 if args.command == "run" else 1
    try:
        settings = load_settings(path)
    except OracleError as e:
        problems = getattr(e, "problems", [e])
        print(f"oraclewad: {path}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2 if args.command == "run" else 1
    if args.command == "check":
        problems = check(settings)
        for warning in warnings(settings):
            print(f"warning: {warning}", file=sys.stderr)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s) found", file=sys.stderr)
            return 1
        print(f"ok: {settings.path} and {settings.tenants_dir} are valid")
        return 0
    from oraclewad.daemon import run_daemon  # heavy imports only when running

    # Once the daemon's own handlers are gone (the very end of a shutdown), a late SIGTERM or
    # SIGINT must not turn a clean exit 0 into a death by signal. (Children never inherit this:
    # they are spawned while the daemon's handlers are installed, which exec resets.)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # a late SIGHUP too
        signal.signal(signum, signal.SIG_IGN)
    try:
        trio.run(run_daemon, settings)
    except OracleError as e:
        print(f"oraclewad: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
