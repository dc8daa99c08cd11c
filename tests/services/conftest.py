from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from tests.services.helpers import Child, NotifyReceiver, spawn


@pytest.fixture
async def launch(nursery: trio.Nursery) -> AsyncIterator[Callable[..., Child]]:
    children: list[Child] = []

    def start(env: dict[str, str], module: str = "oraclewad.services.recovery", listen=None) -> Child:
        child = spawn(nursery, module, env, listen)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


async def _receiver(nursery: trio.Nursery, address: str) -> AsyncIterator[NotifyReceiver]:
    receiver = NotifyReceiver(address)
    await receiver.bind()
    scope = trio.CancelScope()
    done = trio.Event()

    async def run() -> None:
        with scope:
            await receiver.pump()
        done.set()

    nursery.start_soon(run)
    yield receiver
    scope.cancel()
    await done.wait()
    receiver.close()


@pytest.fixture
async def notify(nursery: trio.Nursery) -> AsyncIterator[NotifyReceiver]:
    """NOTIFY_SOCKET in the abstract namespace ('@...')."""
    async for receiver in _receiver(nursery, "@owa-test-" + secrets.token_hex(8)):
        yield receiver


@pytest.fixture
async def notify_path(nursery: trio.Nursery, workdir: Path) -> AsyncIterator[NotifyReceiver]:
    """NOTIFY_SOCKET as a filesystem path."""
    async for receiver in _receiver(nursery, str(workdir / "notify.sock")):
        yield receiver
