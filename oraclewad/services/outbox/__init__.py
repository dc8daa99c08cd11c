"""What recovery and broadcast share about their outbox: the row's life after its claim and the
matching of Evolution's acks (store.py), Evolution's events (events.py), and one send with its
recorded outcome (outcome.py), the sender's claim round (loop.py). Each service keeps its own
table, claim and pacing."""

from oraclewad.services.outbox.events import EvolutionEvents
from oraclewad.services.outbox.outcome import Recorder
from oraclewad.services.outbox.store import ACK_STATUS, HELD_KEEP, Outbox, record_opt_out, ts

__all__ = ["ACK_STATUS", "HELD_KEEP", "EvolutionEvents", "Outbox", "Recorder", "record_opt_out", "ts"]
