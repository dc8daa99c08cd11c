"""A PostgreSQL connection pool that starts its worker threads at its first use, not at startup.

psycopg_pool starts four threads when a pool opens (three workers and a scheduler). A service
child opens its own pool and, for the tenant's shared database, a second one; starting those
threads before READY=1 made every (re)start wait for them, and most children touch the shared
database rarely. With min_size 0 an open pool holds no connection either, so opening it at the
first request changes nothing a request sees except that first request's few microseconds.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any

from psycopg import Connection
from psycopg_pool import ConnectionPool


class OpenOnUse(ConnectionPool):
    """ConnectionPool(open=False) that opens at the first connection() or getconn(); once close()
    was called it is never opened (again), so a late caller gets PoolClosed as from any pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["open"] = False
        super().__init__(*args, **kwargs)
        self._may_open = True
        self._open_lock = threading.Lock()

    def _open_once(self) -> None:
        if self._may_open:
            with self._open_lock:
                if self._may_open:
                    self.open()
                    self._may_open = False

    def connection(self, timeout: float | None = None) -> AbstractContextManager[Connection[Any]]:
        self._open_once()
        return super().connection(timeout)

    def getconn(self, timeout: float | None = None) -> Connection[Any]:
        self._open_once()
        return super().getconn(timeout)

    def close(self, timeout: float = 5.0) -> None:
        with self._open_lock:
            self._may_open = False
        super().close(timeout)
