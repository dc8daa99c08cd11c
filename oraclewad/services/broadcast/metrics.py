"""The broadcast service's Prometheus series (labels are bounded: a campaign id, never a phone)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

from oraclewad.services.broadcast.store import STATUSES

SHOWN_CAMPAIGNS = 20   # the newest campaigns get series; older finished ones drop out


class BroadcastMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Gauge("oraclewa_broadcast_campaign_messages",
                              "Recipients of a campaign by status (pending, sending, sent, delivered, read, "
                              "failed, invalid, suppressed, uncertain, cancelled)", ["campaign", "status"],
                              registry=registry)
        self.eta = Gauge("oraclewa_broadcast_campaign_eta_seconds",
                         "Seconds until a running campaign's last message goes, from the anti-ban "
                         "engine's schedule (-1: no instance will send it)", ["campaign"], registry=registry)
        self.sends = Counter("oraclewa_broadcast_sends",
                             "Campaign sends by outcome (sent or the failure kind)", ["result"],
                             registry=registry)
        self.imported = Counter("oraclewa_broadcast_imported_recipients",
                                "Imported recipients by outcome (accepted, invalid, duplicate, suppressed)",
                                ["outcome"], registry=registry)
        self.evolution_events = Counter("oraclewa_broadcast_evolution_events",
                                        "Evolution webhook events by event and result", ["event", "result"],
                                        registry=registry)
        self._shown: set[str] = set()

    def set_campaigns(self, figures: dict[int, tuple[dict[str, int], float | None, bool]]) -> None:
        """figures: campaign id -> (counts by status, ETA seconds or None, running)."""
        keep = sorted(figures)[-SHOWN_CAMPAIGNS:]
        shown = {str(c) for c in keep}
        for gone in self._shown - shown:
            for status in STATUSES:
                self.messages.remove(gone, status)
            with contextlib.suppress(KeyError):
                self.eta.remove(gone)
        for cid in keep:
            counts, eta, running = figures[cid]
            for status in STATUSES:
                self.messages.labels(str(cid), status).set(counts.get(status, 0))
            if running:
                self.eta.labels(str(cid)).set(-1 if eta is None else max(eta, 0.0))
            else:
                with contextlib.suppress(KeyError):
                    self.eta.remove(str(cid))
        self._shown = shown
