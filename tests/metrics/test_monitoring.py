"""monitoring/: the alert rules pass promtool, and the rules and the dashboard ask only for
metrics the daemon really exports (checked against a live scrape) or that are declared pending."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import REPO
from tests.metrics.conftest import MetricsDaemon, promtool

MONITORING = REPO / "monitoring"
NAME = re.compile(r"\boraclewa_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def pending() -> set[str]:
    lines = (MONITORING / "pending-metrics.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def exported(text: str) -> set[str]:
    """Every series name a scrape can hold, families with no sample yet included."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
    return names


def referenced(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in NAME.findall(expr)}


def rule_exprs() -> list[str]:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict:  # type: ignore[type-arg]
    return json.loads((MONITORING / "grafana" / "oraclewa.json").read_text())


def dashboard_exprs(dash: dict) -> list[str]:  # type: ignore[type-arg]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return exprs


@pytest.mark.parametrize("args", [("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml"),
                                  ("check", "config", "prometheus.yml")])
def test_promtool_accepts_the_rules_their_tests_and_the_example_config(args: tuple[str, ...]) -> None:
    result = subprocess.run([promtool(), *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_and_a_runbook() -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    wanted = {"OracleWAServiceDown", "OracleWAServiceDegraded", "OracleWACrashLooping",
              "OracleWAOutboxGrowing", "OracleWAOutboxOld", "OracleWAInstanceBanned",
              "OracleWAUncertainMessages",
              "OracleWADailyCapBeforeNoon", "OracleWAChildScrapeTimingOut", "OracleWALogDiskFilling"}
    assert wanted <= {r["alert"] for r in rules}
    tested = (MONITORING / "alerts_test.yml").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert len(rule["annotations"]["runbook"]) > 100, rule["alert"]
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test case"


def test_the_dashboard_has_a_tenant_variable_and_the_promised_sections() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "oraclewa_service_up" in variables["tenant"]["definition"]
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    for section in ("Fleet overview", "services", "Recovery funnel", "Campaign progress", "Instance health"):
        assert any(section in title for title in rows), section
    tenant_panels = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])
                     if "$tenant" in t["expr"]]
    assert len(tenant_panels) > 20
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_rules_and_dashboard_ask_only_for_exported_or_pending_metrics(metrics_daemon: MetricsDaemon) -> None:
    live = exported(metrics_daemon.get().text)
    waiting = pending()
    uses = referenced(rule_exprs()) | referenced(dashboard_exprs(dashboard()))
    def covers(name: str, use: str) -> bool:     # a pending histogram covers its _bucket series
        return use == name or use in {name + s for s in SUFFIXES["histogram"]}

    unknown = {u for u in uses - live if not any(covers(p, u) for p in waiting)}
    assert not unknown, f"neither exported nor in monitoring/pending-metrics.txt: {sorted(unknown)}"
    # The pending list holds only names something uses (a renamed metric cannot linger there).
    unused = {p for p in waiting if not any(covers(p, u) for u in uses)}
    assert not unused, sorted(unused)
    # Every per-service figure the daemon exports is on the dashboard somewhere.
    families = {f.name for f in text_string_to_metric_families(metrics_daemon.get().text)
                if f.name.startswith(("oraclewa_service_", "oraclewa_child_scrape_"))}
    shown = referenced(dashboard_exprs(dashboard()))
    missing = {f for f in families if not any(name.startswith(f) for name in shown)}
    assert not missing, f"exported but on no dashboard panel: {sorted(missing)}"


def test_the_monitoring_files_are_in_the_repo() -> None:
    assert {p.name for p in MONITORING.iterdir()} >= {"alerts.yml", "alerts_test.yml", "prometheus.yml",
                                                      "pending-metrics.txt", "grafana"}
    assert Path(MONITORING / "grafana" / "oraclewa.json").stat().st_size > 1000
