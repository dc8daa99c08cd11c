"""The recovery service's Prometheus series (labels are bounded: never a phone or an order id)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from oraclewad.services.series import kept_children

STATUSES = ("pending", "sending", "sent", "delivered", "read", "failed", "cancelled", "dropped",
            "invalid", "suppressed", "uncertain")


class RecoveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.webhooks = Counter(
            "oraclewa_recovery_webhooks", "Order webhooks by event and result "
            "(accepted, duplicate, unauthorized, invalid, too_large, unavailable)",
            ["event", "result"], registry=registry)
        self._webhook = kept_children(self.webhooks)   # both labels bounded: EVENTS + "unknown", results
        self.evolution_events = Counter(
            "oraclewa_recovery_evolution_events", "Evolution webhook events by event and result",
            ["event", "result"], registry=registry)
        self.messages = Gauge("oraclewa_recovery_messages", "Messages by status (refreshed by the sender)",
                              ["status"], registry=registry)
        self.send_latency = Histogram(
            "oraclewa_recovery_send_duration_seconds", "Time Evolution took to accept a sendText "
            "(includes the typing delay)", ["result"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60), registry=registry)
        self.outbox_depth = Gauge("oraclewa_recovery_outbox_depth_messages",
                                  "Pending messages already due (waiting for an instance)", registry=registry)
        self.outbox_age = Gauge("oraclewa_recovery_outbox_age_seconds",
                                "How long the oldest due pending message has waited", registry=registry)
        self.uncertain = Gauge("oraclewa_recovery_uncertain_messages",
                               "Messages whose send outcome is unknown (never resent blindly)",
                               registry=registry)
        self.recovered_orders = Counter("oraclewa_recovery_recovered_orders",
                                        "Orders paid after a reminder went out", registry=registry)
        self.revenue = Counter("oraclewa_recovery_revenue_brl", "Revenue of recovered orders (BRL)",
                               registry=registry)
        self.instance_up = Gauge("oraclewa_recovery_instance_sendable",
                                 "1 when an instance is open and in rotation", ["instance"],
                                 registry=registry)

    def webhook(self, event: str, result: str) -> None:
        self._webhook(event, result).inc()

    def recovered(self, total: float) -> None:
        self.recovered_orders.inc()
        self.revenue.inc(total)

    def set_counts(self, counts: dict[str, int], depth: int, age: float) -> None:
        for status in STATUSES:
            self.messages.labels(status).set(counts.get(status, 0))
        self.uncertain.set(counts.get("uncertain", 0))
        self.outbox_depth.set(depth)
        self.outbox_age.set(age)
