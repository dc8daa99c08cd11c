"""A PostgreSQL connection pool that starts its worker threads at its first use, not at startup,
and checks a connection before handing it out unless it came back from a use moments ago.

psycopg_pool starts four threads when a pool opens (three workers and a scheduler). A service
child opens its own pool and, for the tenant's shared database, a second one; starting those
threads before READY=1 made every (re)start wait for them, and most children touch the shared
database rarely. With min_size 0 an open pool holds no connection either, so opening it at the
first request changes nothing a request sees except that first request's few microseconds.

The check (an empty query) finds a connection the server closed while it sat in the pool and
replaces it unseen. It is a round trip of its own: for a webhook's group commit, one of two
(with the statement), and on a busy service the connection it checks was in use a millisecond
ago. So a connection returned in working order less than TRUSTED_FOR ago is handed out
unchecked; if the server dropped it within that second, that one call fails as it would mid-use
(the caller's database-error path: a webhook answers 503, never an acknowledged loss) and the
pool replaces the connection when it comes back.
"""

from __future__ import annotations

import threading
import time
import weakref
from contextlib import AbstractContextManager
from typing import Any

from psycopg import Connection
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

TRUSTED_FOR = 1.0   # seconds after a connection's return during which it is not checked again
_returned: weakref.WeakKeyDictionary[Connection[Any], float] = weakref.WeakKeyDictionary()


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

    def putconn(self, conn: Connection[Any]) -> None:
        if conn.pgconn.transaction_status == TransactionStatus.IDLE:
            _returned[conn] = time.monotonic()
        super().putconn(conn)

    @staticmethod
    def check_unless_fresh(conn: Connection[Any]) -> None:
        """The pool's `check`: ConnectionPool.check_connection, skipped for a connection returned
        idle less than TRUSTED_FOR ago."""
        returned = _returned.pop(conn, None)
        if (returned is not None and time.monotonic() - returned < TRUSTED_FOR
                and conn.pgconn.transaction_status == TransactionStatus.IDLE):
            return
        ConnectionPool.check_connection(conn)

    def close(self, timeout: float = 5.0) -> None:
        with self._open_lock:
            self._may_open = False
        super().close(timeout)
