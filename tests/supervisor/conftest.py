from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from oraclewad.settings import LogSettings, Policy
from oraclewad.supervisor import ProcessSpec, Supervisor
from oraclewad.supervisor.forking import ForkUnavailable
from tests.support.system import children_of, proc_state

CHILD = Path(__file__).resolve().parent.parent / "programs" / "child.py"

# Quick to restart, never degraded unless a test asks for it, generous start deadline.
FAST = Policy(backoff_initial=0.05, backoff_max=0.5, backoff_jitter=0.0, backoff_reset_after=60.0,
              breaker_restarts=1000, breaker_window=600.0, start_timeout=10.0, watchdog_timeout=5.0,
              stop_grace=3.0)


def child_argv(*flags: str) -> tuple[str, ...]:
    # -S skips site: the child is stdlib only and starts faster.
    return (sys.executable, "-S", str(CHILD), *flags)


def status_fields(message: str) -> dict[str, str]:
    """The key=value pairs the test child puts in STATUS=."""
    return dict(part.split("=", 1) for part in message.split() if "=" in part)


def zombie_children() -> list[int]:
    return sorted(pid for pid in children_of(os.getpid()) if proc_state(pid) == "Z")


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> None:
    """For conditions no event announces (a pid disappearing from /proc)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


@pytest.fixture
def root() -> Iterator[Path]:
    # Short on purpose: unix socket paths are limited to 107 bytes, pytest's tmp_path is long.
    path = Path(tempfile.mkdtemp(prefix="owa", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["exec", "fork"])
def spawn_mode(request: pytest.FixtureRequest) -> str:
    """Every supervisor test runs with exec'd children and with children forked from a template."""
    return str(request.param)


@pytest.fixture
def make_spec(root: Path, spawn_mode: str) -> Callable[..., ProcessSpec]:
    def make(name: str, *flags: str, **fields: Any) -> ProcessSpec:
        group, _, _ = name.partition("/")
        fields["policy"] = replace(fields.get("policy", FAST), spawn=spawn_mode)
        fields.setdefault("admin_socket", False)
        return ProcessSpec(name=name, group=group, argv=child_argv(*flags),
                           log_dir=root / "logs" / name, **fields)
    return make


@pytest.fixture
def make_supervisor(root: Path, nursery: trio.Nursery, spawn_mode: str) -> Callable[..., Any]:
    async def make(logs: LogSettings | None = None, **kwargs: Any) -> Supervisor:
        kwargs.setdefault("rng", random.Random(7))
        kwargs.setdefault("reap_grace", 0.3)
        # The test child is stdlib only: a template that imports nothing starts in milliseconds.
        kwargs.setdefault("template_preload", ())
        sup = Supervisor(root / "run", root / "state", logs or LogSettings(), **kwargs)
        await nursery.start(sup.run)
        if spawn_mode == "fork":
            # Warm, as in a daemon that has run a while: the first spawn of a test is not also the
            # template's start (timing tests measure gaps between spawns). A template that cannot
            # start is the test's business: it sees the fallback.
            with contextlib.suppress(ForkUnavailable):
                await sup.templates.template(sys.executable).ensure()
        return sup
    return make


@pytest.fixture
async def sup(make_supervisor: Callable[..., Any]) -> AsyncIterator[Supervisor]:
    yield await make_supervisor()


def policy(**changes: Any) -> Policy:
    return replace(FAST, **changes)
