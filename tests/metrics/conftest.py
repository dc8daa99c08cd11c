"""One real daemon (embedded PostgreSQL/Redis, so the tenant can be called `imperio` without
touching the machine's shared servers) with its metrics endpoint, shared by the metrics tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import Daemon, free_port_base, unique_id, wait_for, write_config, write_tenant

CHILD_TIMEOUT = 0.5


@dataclass
class MetricsDaemon:
    daemon: Daemon
    url: str            # http://127.0.0.1:PORT
    other: str          # a second tenant, next to imperio
    token: str          # imperio's /tenants/imperio/metrics bearer token

    def get(self, path: str = "/metrics", **kw: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)  # type: ignore[arg-type]

    def running(self) -> bool:
        rows = self.daemon.ctl_json("status")
        return len(rows) == 4 and all(r["state"] == "running" and r["ready"] for r in rows)  # type: ignore[index, union-attr]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; `make test` installs it "
                    "with apt-get when apt is available)")
    return path


@pytest.fixture(scope="module")
def metrics_daemon() -> Iterator[MetricsDaemon]:
    # Not under pytest's basetemp: as root, the embedded PostgreSQL's system user must traverse
    # the parents, and another pytest session on the machine resets /tmp/pytest-of-root to 0700.
    root = Path(tempfile.mkdtemp(prefix="owa-metrics-"))
    port = free_port_base() + 195
    config = write_config(root, backend="embedded",
                          extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\nchild_timeout = {CHILD_TIMEOUT}\n')
    token = "s3cret-metrics-token"
    (root / "imperio.metrics.token").write_text(token + "\n")
    write_tenant(root, "imperio", '[metrics]\ntoken_file = "../imperio.metrics.token"\n')
    other = unique_id("m")
    write_tenant(root, other)
    daemon = Daemon(root, config)
    md = MetricsDaemon(daemon, f"http://127.0.0.1:{port}", other, token)
    try:
        daemon.start(timeout=120)
        wait_for(md.running, timeout=120, what="4 services running")
        yield md
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
