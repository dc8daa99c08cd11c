"""A real Prometheus server (Debian package `prometheus`) scraping the daemon on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import free_port_base, wait_for
from tests.metrics.conftest import MetricsDaemon
from tests.support.system import stop_process


@pytest.fixture
def prometheus(metrics_daemon: MetricsDaemon) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package `prometheus`; `make test` installs it "
                    "with apt-get when apt is available)")
    root = Path(tempfile.mkdtemp(prefix="owa-prom-"))
    port = free_port_base() + 196
    target = metrics_daemon.url.removeprefix("http://")
    (root / "prometheus.yml").write_text(f"""
global:
  # Generous for a loaded 2-core machine: a scrape that times out marks every series stale.
  scrape_interval: 2s
  scrape_timeout: 2s
scrape_configs:
  - job_name: oraclewad
    static_configs:
      - targets: ["{target}"]
""")
    with open(root / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={root / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url, proc), timeout=60, what="prometheus ready")
        yield url
    finally:
        stop_process(proc, 15)
        shutil.rmtree(root, ignore_errors=True)


def _ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"prometheus exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, promql: str) -> list[dict]:  # type: ignore[type-arg]
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_sees_the_service_up_and_a_kill_as_a_restart(prometheus: str,
                                                                metrics_daemon: MetricsDaemon) -> None:
    up = 'oraclewa_service_up{tenant="imperio",service="recovery"} == 1'
    wait_for(lambda: query(prometheus, up), timeout=60, interval=0.5, what=f"Prometheus to return {up}")
    # The scrape itself is healthy: Prometheus' own `up` for the job, and no child timed out.
    assert query(prometheus, 'up{job="oraclewad"} == 1')
    restarts = 'sum(oraclewa_service_restarts_total{tenant="imperio",service="recovery"})'
    before = float(wait_for(lambda: query(prometheus, restarts), timeout=30, interval=0.5,
                            what=restarts)[0]["value"][1])

    pid = next(r["pid"] for r in metrics_daemon.daemon.ctl_json("status")  # type: ignore[union-attr]
               if r["tenant"] == "imperio" and r["service"] == "recovery")
    os.kill(pid, signal.SIGKILL)

    def grown() -> bool:
        result = query(prometheus, restarts)
        return bool(result) and float(result[0]["value"][1]) > before

    wait_for(grown, timeout=60, interval=0.5, what="oraclewa_service_restarts_total to grow in Prometheus")
    by_signal = ('oraclewa_service_restarts_total{tenant="imperio",service="recovery",reason="signal"} >= 1')
    wait_for(lambda: query(prometheus, by_signal), timeout=30, interval=0.5, what=by_signal)
    wait_for(lambda: query(prometheus, up), timeout=60, interval=0.5, what="the service up again")
