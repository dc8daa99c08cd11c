"""The daemon's events: one Fanout of EventView (oraclectl events, the control plane's feed)."""

from __future__ import annotations

from oraclewad.fanout import Fanout
from oraclewad.operations import EventView


class EventHub(Fanout[EventView]):
    """The daemon's events (oraclectl events, the control plane's feed)."""

    def __init__(self, buffer: int = 256) -> None:
        super().__init__(buffer)
