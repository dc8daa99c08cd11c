"""Data servers of a test's own, for tests that stop and start them (the machine's shared ones
are never stopped)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oraclewad.provision.embedded import EmbeddedPostgres


@contextmanager
def private_postgres(*, shared_socket: bool = False) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL in a fresh folder, stopped and removed at the end. shared_socket:
    its socket in a folder other uids reach (tenant users connect as to a server of the machine)."""
    root = Path(tempfile.mkdtemp(prefix="owa-pg-"))
    if shared_socket:
        root.chmod(0o711)
    server = EmbeddedPostgres(root / "pg", socket_dir=root / "sock" if shared_socket else None)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
