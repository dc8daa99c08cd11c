"""Fan-out of daemon events to any number of watchers, none of which can slow the daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from oraclewad.operations import EventView


class EventHub:
    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._watchers: set[trio.MemorySendChannel[EventView]] = set()

    def publish(self, event: EventView) -> None:
        for send in list(self._watchers):
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # A watcher that fell a whole buffer behind is cut off; its stream ends.
                self._watchers.discard(send)
                send.close()

    async def watch(self) -> AsyncIterator[EventView]:
        send, receive = trio.open_memory_channel[EventView](self._buffer)
        self._watchers.add(send)
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            self._watchers.discard(send)
            send.close()
