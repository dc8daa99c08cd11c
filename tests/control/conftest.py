"""Fixtures for the few tests that serve the Operations double (see tests/control/double.py)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest

from tests.control.double import Harness, fast_limits, serving, short_tmp


@pytest.fixture
async def control() -> AsyncIterator[Harness]:
    """The real control server (unix socket, fast_limits()) over the in-process Operations double."""
    root = short_tmp()
    try:
        async with serving(root, limits=fast_limits()) as harness:
            yield harness
    finally:
        shutil.rmtree(root, ignore_errors=True)
