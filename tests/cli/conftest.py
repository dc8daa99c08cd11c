from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest

from tests.control.double import Harness, fast_limits, serving, short_tmp


@pytest.fixture
def root():  # type: ignore[no-untyped-def]
    path = short_tmp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def control(root) -> AsyncIterator[Harness]:  # type: ignore[no-untyped-def]
    """The real control server (unix socket) over the in-process Operations double."""
    async with serving(root, limits=fast_limits()) as harness:
        yield harness
