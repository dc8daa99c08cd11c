"""Builders for anti-ban tests: a real InstanceStates (fed connection.update events as Evolution
would post them) and an engine over the test database."""

from __future__ import annotations

from typing import Any

from oraclewad.services.antiban import Engine, Rules
from oraclewad.services.instances import InstanceStates

T0 = 1_780_000_000.0   # 2026-05-28 17:26:40 America/Sao_Paulo (a Thursday, inside business hours)


def states(names: list[str], *, open_: bool = True) -> InstanceStates:
    s = InstanceStates(names, None)
    if open_:
        for name in names:
            s.apply_connection_update({"instance": name, "state": "open"})
    return s


def engine(names: list[str], table: dict[str, Any] | None = None, *, service: str = "broadcast",
           view: InstanceStates | None = None, recovery: dict[str, Any] | None = None) -> Engine:
    rules = Rules.for_service(service, table or {}, recovery=recovery)
    return Engine(service=service, names=names, rules=rules, instances=view or states(names))


# The whole strategy minus what a test is not about.
NO_WARMUP_WAIT = {"standby_hours": 0, "manual_messages": 0}
