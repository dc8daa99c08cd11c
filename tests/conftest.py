from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import ISSUED_IDS, Daemon, drop_external, external_servers_reachable, write_config
from tests.support.sandbox import Sandbox, SandboxProcess

# The fixtures of the tests that run a real sending service (recovery, broadcast, anti-ban).
pytest_plugins = ["tests.services.sending"]

# OWA_TEST_BACKEND=embedded runs everything as on a machine without PostgreSQL/Redis.
EXTERNAL = os.environ.get("OWA_TEST_BACKEND") != "embedded" and external_servers_reachable()


@pytest.fixture(scope="session")
def backend() -> str:
    """The machine's PostgreSQL/Redis when they run (the production path), else embedded ones."""
    return "external" if EXTERNAL else "embedded"


@pytest.fixture
def make_daemon(tmp_path: Path, backend: str) -> Iterator[Callable[..., Daemon]]:
    """Build real daemons on temporary configs; every one is stopped at the end of the test."""
    made: list[Daemon] = []

    def make(root: Path | None = None, *, backend: str = backend, extra: str = "",
             policy: str = "") -> Daemon:
        root = root or tmp_path / f"d{len(made)}"
        root.mkdir(parents=True, exist_ok=True)
        daemon = Daemon(root, write_config(root, backend=backend, extra=extra, policy=policy))
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()
    if backend == "external":
        ids = {p.name.split(".")[0] for d in made for p in (d.root / "tenants.d").rglob("*.toml")}
        drop_external(sorted(ids))


@pytest.fixture(scope="session", autouse=True)
def _drop_what_the_session_provisioned() -> Iterator[None]:
    """Ids whose tenant file a test deleted escape per-test cleanup; the session catches them."""
    yield
    if EXTERNAL and ISSUED_IDS:
        drop_external(sorted(set(ISSUED_IDS)))


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[SandboxProcess]:
    """One Evolution sandbox process for the session (stopped at its end)."""
    process = SandboxProcess.start()
    yield process
    process.stop()


@pytest.fixture
def sandbox(sandbox_process: SandboxProcess) -> Sandbox:
    """The session's sandbox, emptied for this test: no instances, messages, faults or numbers."""
    sandbox_process.reset()
    return Sandbox(sandbox_process)
