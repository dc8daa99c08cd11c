"""The daemon's /metrics, /tenants/ID/metrics, /healthz and /readyz, on a live fleet."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import wait_for
from tests.metrics.conftest import CHILD_TIMEOUT, MetricsDaemon, promtool


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_scrape_has_every_service_and_the_children_metrics(metrics_daemon: MetricsDaemon) -> None:
    md = metrics_daemon
    md.get("/tenants/imperio/metrics", headers={"authorization": f"Bearer {md.token}"})  # a request to count
    body = md.get().text
    up = samples(body, "oraclewa_service_up")
    for tenant in ("imperio", md.other):
        for service in ("recovery", "broadcast"):
            assert up[(("service", service), ("tenant", tenant))] == 1.0
    state = samples(body, "oraclewa_service_state")
    assert state[(("service", "recovery"), ("state", "running"), ("tenant", "imperio"))] == 1.0
    assert state[(("service", "recovery"), ("state", "backoff"), ("tenant", "imperio"))] == 0.0
    rss = samples(body, "oraclewa_service_resident_memory_bytes")
    assert rss[(("service", "recovery"), ("tenant", "imperio"))] > 10_000_000
    assert samples(body, "oraclewa_service_proportional_memory_bytes")
    assert samples(body, "oraclewa_service_cpu_seconds_total")
    assert samples(body, "oraclewa_service_start_duration_seconds")[
        (("service", "broadcast"), ("tenant", "imperio"))] > 0
    assert samples(body, "oraclewa_service_log_bytes_total")[
        (("service", "recovery"), ("tenant", "imperio"))] > 0
    assert samples(body, "oraclewa_service_release_info")
    # The children's own registries, relabelled: each child's request counter under its tenant.
    scraped = samples(body, "oraclewa_child_scrape_success")
    assert len(scraped) == 4 and set(scraped.values()) == {1.0}
    assert "oraclewa_http_requests_in_flight" in families(body)
    in_flight = samples(body, "oraclewa_http_requests_in_flight")
    assert (("service", "recovery"), ("tenant", md.other)) in in_flight
    assert samples(body, "oraclewa_tenants")[(("state", "ok"),)] == 2.0
    assert samples(body, "oraclewa_child_scrape_timeout_seconds")[()] == 0.5
    # Control requests by method and code (the fixture's oraclectl status calls).
    requests = samples(body, "oraclewa_control_requests_total")
    assert requests[(("code", "OK"), ("method", "Status"))] >= 1
    assert "owa_" not in body.replace("oraclewa_", "")


def test_promtool_accepts_the_live_scrape_and_a_tenant_scrape(metrics_daemon: MetricsDaemon) -> None:
    tool = promtool()
    md = metrics_daemon
    bearer = {"authorization": f"Bearer {md.token}"}
    for path, headers in (("/metrics", {}), ("/tenants/imperio/metrics", bearer),
                          (f"/tenants/{md.other}/metrics", {})):
        response = md.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text)
        check = subprocess.run([tool, "check", "metrics"], input=response.text, capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, (path, check.stdout, check.stderr)


def test_a_tenant_scrape_holds_only_that_tenant(metrics_daemon: MetricsDaemon) -> None:
    md = metrics_daemon
    body = md.get(f"/tenants/{md.other}/metrics").text
    tenants = {dict(k).get("tenant") for name in ("oraclewa_service_up", "oraclewa_http_requests_in_flight")
               for k in samples(body, name)}
    assert tenants == {md.other}
    assert "imperio" not in body
    assert "oraclewa_control_requests" not in body and "oraclewa_tenants" not in body


def test_a_tenant_token_guards_its_endpoint(metrics_daemon: MetricsDaemon) -> None:
    md = metrics_daemon
    missing = md.get("/tenants/imperio/metrics")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = md.get("/tenants/imperio/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "oraclewa_" not in wrong.text
    ok = md.get("/tenants/imperio/metrics", headers={"authorization": f"Bearer {md.token}"})
    assert ok.status_code == 200 and 'tenant="imperio"' in ok.text
    assert md.get("/tenants/ghost/metrics").status_code == 404


def test_openmetrics_by_content_negotiation(metrics_daemon: MetricsDaemon) -> None:
    md = metrics_daemon
    om = md.get(headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    assert "# TYPE oraclewa_service_restarts counter" in om.text
    text = md.get()
    assert text.headers["content-type"].startswith("text/plain")
    assert "# TYPE oraclewa_service_restarts_total counter" in text.text


def test_health_and_readiness(metrics_daemon: MetricsDaemon) -> None:
    md = metrics_daemon
    assert md.get("/healthz").status_code == 200
    assert md.get("/readyz").status_code == 200


def test_a_hung_child_costs_at_most_the_timeout_and_shows_as_a_metric(metrics_daemon: MetricsDaemon) -> None:
    md = metrics_daemon
    pid = next(r["pid"] for r in md.daemon.ctl_json("status")  # type: ignore[union-attr]
               if r["tenant"] == md.other and r["service"] == "broadcast")
    key = (("service", "broadcast"), ("tenant", md.other))
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(2):      # a second scrape must not queue behind the first one's stuck request
            started = time.monotonic()
            body = md.get().text
            elapsed = time.monotonic() - started
            # Without the bound this takes the test client's 10 s; the margin is for a loaded machine.
            assert elapsed < CHILD_TIMEOUT + 2.0, f"scrape took {elapsed:.2f}s with one child hung"
        assert samples(body, "oraclewa_child_scrape_success")[key] == 0.0
        assert samples(body, "oraclewa_child_scrape_timeouts_total")[key] >= 2
        assert samples(body, "oraclewa_child_scrape_duration_seconds")[key] >= CHILD_TIMEOUT * 0.9
        # Everyone else is still there, the hung one's supervision figures too.
        success = samples(body, "oraclewa_child_scrape_success")
        assert sorted(success.values()) == [0.0, 1.0, 1.0, 1.0]
        assert samples(body, "oraclewa_service_up")[key] == 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: samples(md.get().text, "oraclewa_child_scrape_success").get(key) == 1.0,
             timeout=20, what="the child answering again")
