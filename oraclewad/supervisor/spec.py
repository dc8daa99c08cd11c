"""What the supervisor is asked to run: one frozen spec per service."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from oraclewad.settings import Policy


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised service. Two specs are equal exactly when the running process would differ,
    so `apply` restarts a service iff its spec is unequal (labels are display-only: not compared).
    """

    name: str                                   # "imperio/recovery", "programs/sandbox": unique key
    group: str                                  # tenant id, or "programs"
    argv: tuple[str, ...]
    log_dir: Path                               # logs/<tenant>/<service>/
    # Extra env on top of a minimal inherited one (PATH, LANG, LC_ALL, TZ, HOME, PYTHONPATH if set).
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    # Bound by the supervisor, kept across restarts, passed as fd 3 with LISTEN_FDNAMES=http
    # (then the admin socket, if any). LISTEN_PID is not set (the pid is unknown before the
    # spawn), so children must accept LISTEN_FDS without it. See oraclewad/contract.py.
    listen: tuple[str, int] | None = None
    # True: the child must send READY=1 (start deadline applies) and WATCHDOG=1 when the policy
    # has a watchdog. False: running as soon as spawned, no watchdog.
    notify: bool = True
    config: str | None = None                   # JSON text -> sealed memfd, number in OWA_CONFIG_FD
    admin_socket: bool = True                   # bound at run_dir/admin/<group>-<svc>.sock, passed as fd
    user: tuple[int, int] | None = None         # (uid, gid) to run as; None: the daemon's user
    private_tmp: Path | None = None             # TMPDIR, HOME and default cwd, owned by `user`
    policy: Policy = field(default_factory=Policy)
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.argv:
            raise ValueError("ProcessSpec needs a name and a non-empty argv")

    @property
    def service(self) -> str:
        """The part of the name after the group ("recovery" in "imperio/recovery")."""
        return self.name.rpartition("/")[2]

    @property
    def file_stem(self) -> str:
        """<group>-<svc>: the stem of this service's config file and admin socket."""
        return f"{self.group}-{self.service}"


def admin_socket_path(run_dir: Path, group: str, service: str, slot: int = 0) -> Path:
    """Where the supervisor binds a service's admin socket; slot 1 is the other process of a
    release swap (the two alternate)."""
    return run_dir / "admin" / f"{group}-{service}{'' if slot == 0 else f'.{slot}'}.sock"
