"""Group commit: concurrent callers' items stored by one batch call, each caller answered after it.

A durable write costs a commit (a WAL flush) and, from trio, a thread hop and a pooled connection.
Paying that once per request caps a service at a few hundred writes a second; paying it once per
batch of the requests that arrived meanwhile does not. No timer: the first caller runs at once
(a batch of one when traffic is light), and whoever arrives while a batch is in the database
waits for the next one, which the first of them runs (the batch grows with the load).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T]):
    __slots__ = ("finished", "item", "result", "turn")

    def __init__(self, item: T) -> None:
        self.item = item
        self.turn = trio.Event()        # set when finished, or when this caller must run the next batch
        self.result: object = None
        self.finished = False


class GroupCommit(Generic[T, R]):
    """`run(items)` returns one result per item, an Exception standing for that item's failure;
    if `run` itself raises, every caller of that batch gets the exception."""

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
                 max_batch: int = 256) -> None:
        self._run = run
        self._max = max_batch
        self._queue: list[_Slot[T]] = []
        self._leading = False   # a batch is in the database, or about to be (handed over)
        self.batches = 0        # figures for benches and tests
        self.items = 0

    async def submit(self, item: T) -> R:
        slot = _Slot(item)
        self._queue.append(slot)
        # Shielded, like a thread running a transaction: a batch finishes or fails cleanly, and a
        # caller cancelled meanwhile (a client gone) does not leave the others without a leader.
        with trio.CancelScope(shield=True):
            if self._leading:
                await slot.turn.wait()
            if not slot.finished:
                await self._lead()
        if isinstance(slot.result, BaseException):
            raise slot.result
        return slot.result  # type: ignore[return-value]

    async def _lead(self) -> None:
        self._leading = True
        try:
            await trio.lowlevel.checkpoint()   # let requests that are ready join this batch
            batch = self._queue[:self._max]
            del self._queue[:self._max]
            try:
                results: Sequence[object] = await self._run([s.item for s in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"group commit: {len(results)} results for {len(batch)} items")
            except Exception as exc:
                results = [exc] * len(batch)
            self.batches += 1
            self.items += len(batch)
            for s, result in zip(batch, results, strict=True):
                s.result, s.finished = result, True
                s.turn.set()
        finally:
            if self._queue:
                self._queue[0].turn.set()   # it leads the next batch (self._leading stays True)
            else:
                self._leading = False
