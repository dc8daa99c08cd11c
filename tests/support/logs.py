"""Awaiting what the daemon logs, for tests that run its parts in-process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import trio


class _Seen(logging.Handler):
    def __init__(self, fragment: str, event: trio.Event, token: trio.lowlevel.TrioToken) -> None:
        super().__init__()
        self.fragment = fragment
        self.event = event
        self.token = token

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            # The record may come from a grpc thread: set the event on the trio thread.
            self.token.run_sync_soon(self.event.set)


@contextmanager
def logged(logger: str, fragment: str) -> Iterator[trio.Event]:
    """An event set once `logger` (or a child of it) logs a message containing `fragment`."""
    event = trio.Event()
    handler = _Seen(fragment, event, trio.lowlevel.current_trio_token())
    target = logging.getLogger(logger)
    old_level = target.level
    target.addHandler(handler)
    if target.getEffectiveLevel() > logging.WARNING:
        target.setLevel(logging.WARNING)
    try:
        yield event
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)
