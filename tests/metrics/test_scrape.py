"""The merge of children's expositions: what prometheus_client writes, read back exactly."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from oraclewad.scrape import ChildParser, key_figures, merge


class Fixed:
    def __init__(self, metrics: list) -> None:  # type: ignore[type-arg]
        self.metrics = metrics

    def collect(self):  # type: ignore[no-untyped-def]
        return self.metrics


def child_text(route: str, sent: float) -> str:
    registry = CollectorRegistry()
    requests = Counter("oraclewa_http_requests", "Requests\nserved \\ by route", ["route", "status"],
                       registry=registry)
    requests.labels(route, "200").inc(3)
    latency = Histogram("oraclewa_http_request_duration_seconds", "Latency", ["route"], buckets=(0.1, 1.0),
                        registry=registry)
    latency.labels(route).observe(0.5)
    Gauge("oraclewa_outbox_depth", "Due messages", registry=registry).set(7)
    messages = Counter("oraclewa_messages", "Messages by status", ["status"], registry=registry)
    messages.labels("sent").inc(sent)
    messages.labels("failed").inc(1)
    # A child must not pose as another tenant, nor shadow the daemon's own names.
    Gauge("oraclewa_fake", "Sets identity labels", ["tenant", "service"], registry=registry).labels(
        "someone-else", "x").set(1)
    Gauge("oraclewa_service_up", "Not the child's to export", registry=registry).set(1)
    return generate_latest(registry).decode()


def test_children_merge_into_one_family_each_relabelled_and_round_trip() -> None:
    a = ChildParser("imperio", "recovery")
    b = ChildParser("loja", "broadcast")
    text_a = child_text('/a b}c"d', 5)     # a route label with a space, a brace and a quote
    families = [a.parse(text_a), a.parse(text_a), b.parse(child_text("/", 2))]  # the second uses the cache
    merged = list(merge([families[1], families[2]]))
    out = generate_latest(Fixed(merged)).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(out)}
    assert out.count("# TYPE oraclewa_http_requests_total counter") == 1
    requests = parsed["oraclewa_http_requests"]
    assert requests.documentation == "Requests\nserved \\ by route"
    seen = {(s.labels["tenant"], s.labels["service"], s.labels["route"], s.value) for s in requests.samples}
    assert seen == {("imperio", "recovery", '/a b}c"d', 3.0), ("loja", "broadcast", "/", 3.0)}
    latency = parsed["oraclewa_http_request_duration_seconds"].samples
    buckets = [s for s in latency if s.name.endswith("_bucket")]
    assert {s.labels["le"] for s in buckets} == {"0.1", "1.0", "+Inf"} and len(buckets) == 6
    fake = parsed["oraclewa_fake"].samples
    assert {(s.labels["tenant"], s.labels["service"]) for s in fake} == {("imperio", "recovery"),
                                                                         ("loja", "broadcast")}
    assert "oraclewa_service_up" not in parsed
    # OpenMetrics from the same families is valid too (the format Prometheus asks for).
    assert openmetrics(Fixed(merged)).decode().endswith("# EOF\n")


def test_key_figures_for_the_cli() -> None:
    figures = key_figures(ChildParser("imperio", "recovery").parse(child_text("/", 5)))
    assert figures == {"outbox_depth": 7.0, "messages_sent": 5.0, "http_requests": 3.0}
