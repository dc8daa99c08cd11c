"""Helpers for the broadcast tests: configs (the rest is tests/services/sending.py)."""

from __future__ import annotations

from typing import Any

from tests.services import sending
from tests.services.sending import merged, rows, service_config, wait_messages, wait_rows  # noqa: F401  (for the tests)

TOKEN = "static-token-" + "b" * 20
JWT_KEY = "jwt-key-for-the-broadcast-tests-0123456789"

# The whole strategy with its waits shrunk to nothing, so a test in real time sends at once; the
# pacing rules themselves are the anti-ban engine's (its own tests run them on a mock clock).
FAST_ANTIBAN: dict[str, Any] = {
    "delay_min": 0, "delay_max": 0, "pause_min": 0, "pause_max": 0, "standby_hours": 0,
    "manual_messages": 0, "text_limit": 0,
    "warmup": {s: {"min": 5000, "max": 5000} for s in ("day1", "day2", "day3", "mature")},
    "working_hours": {"start": "00:00", "end": "23:59", "timezone": "UTC"},
}


def broadcast_config(dsn: str, **overrides: Any) -> dict[str, Any]:
    return merged(service_config("broadcast", dsn, webhook_token=TOKEN, antiban=FAST_ANTIBAN), overrides)


def evolution_config(sandbox: Any, instances: tuple[str, ...] = ("bc-1",)) -> dict[str, Any]:
    return {"evolution": {"url": sandbox.url, "api_key": sandbox.api_key, "api_version": 2,
                          "webhook_jwt_key": JWT_KEY},
            "instances": list(instances)}



async def hook_up(sandbox: Any, child: Any, *names: str) -> None:
    await sending.hook_up(sandbox, child, JWT_KEY, *names)
