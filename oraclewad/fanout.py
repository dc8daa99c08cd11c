"""One broadcast primitive: fan-out of items to any number of subscribers, none of which can slow
the publisher. The supervisor's state changes and the daemon's events (oraclewad.events) both go
through it. Depends on trio only, so the supervisor can use it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Fanout(Generic[T]):
    def __init__(self, buffer: int) -> None:
        self._buffer = buffer
        self._subscribers: set[trio.MemorySendChannel[T]] = set()

    def publish(self, item: T) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # A subscriber that fell a whole buffer behind is cut off; its channel ends.
                self._subscribers.discard(send)
                send.close()

    def subscribe(self, buffer: int | None = None) -> trio.MemoryReceiveChannel[T]:
        """A bounded subscription (close the channel to end it)."""
        send, receive = trio.open_memory_channel[T](buffer or self._buffer)
        self._subscribers.add(send)
        return receive

    async def watch(self) -> AsyncIterator[T]:
        """The subscription as an iterator; leaving it unsubscribes."""
        receive = self.subscribe()
        async with receive:
            async for item in receive:
                yield item
