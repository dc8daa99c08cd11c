"""The proto's enums as the words the daemon and oraclectl use ("running", "recovery"), both ways.

Hand-written, beside the generated modules (gen_proto.py leaves it alone): oraclectl may import
nothing of the daemon but `_proto`, so this is the one place both sides translate. A word the enum
lacks is *_UNSPECIFIED and an enum value a newer peer added is "", never a guess.
"""

from __future__ import annotations

from typing import Any

from oraclewad._proto.oraclewa.v1 import control_pb2 as pb


def _value(enum: Any, prefix: str, word: str) -> int:
    if not word or word != word.lower():
        return 0
    try:
        return enum.Value(prefix + word.upper())
    except ValueError:
        return 0


def _word(enum: Any, prefix: str, value: int) -> str:
    if value == 0 or value not in enum.values():
        return ""
    return enum.Name(value).removeprefix(prefix).lower()


def state_enum(state: str) -> pb.State.ValueType:
    """STATE_RUNNING for "running"; STATE_UNSPECIFIED for "" (an event that is no state change)."""
    return _value(pb.State, "STATE_", state)


def state_name(value: int) -> str:
    return _word(pb.State, "STATE_", value)


def service_enum(service: str) -> pb.Service.ValueType:
    """SERVICE_RECOVERY for "recovery"; SERVICE_UNSPECIFIED for a host program's own name."""
    return _value(pb.Service, "SERVICE_", service)


def service_name(value: int) -> str:
    return _word(pb.Service, "SERVICE_", value)
