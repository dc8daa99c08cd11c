"""Helpers for the broadcast tests: configs, the child, the admin API, database peeks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from oraclewad.services.evolution import webhook_headers
from tests.services.helpers import Child

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
    config: dict[str, Any] = {
        "tenant": "imperio", "service": "broadcast", "display_name": "Império",
        "http": {"host": "127.0.0.1", "port": 0},
        "postgres": {"dsn": dsn, "pool_max": 4},
        "webhook_token": TOKEN, "antiban": FAST_ANTIBAN,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def evolution_config(sandbox: Any, instances: tuple[str, ...] = ("bc-1",)) -> dict[str, Any]:
    return {"evolution": {"url": sandbox.url, "api_key": sandbox.api_key, "api_version": 2,
                          "webhook_jwt_key": JWT_KEY},
            "instances": list(instances)}


@dataclass
class BroadcastChild:
    process: Child
    sock: Any
    port: int
    config: dict[str, Any]
    admin_socket: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self) -> httpx.AsyncClient:
        """The admin socket, as the daemon's ServiceCall reaches it."""
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.admin_socket)),
                                 base_url="http://broadcast", timeout=30)


async def hook_up(sandbox: Any, child: BroadcastChild, *names: str) -> None:
    """Point the instances' webhooks at the child, as `oraclectl instances connect` does."""
    async with httpx.AsyncClient(base_url=sandbox.url, headers={"apikey": sandbox.api_key}) as http:
        for name in names:
            response = await http.post(f"/webhook/set/{name}", json={"webhook": {
                "enabled": True, "url": child.url + "/webhooks/evolution",
                "headers": webhook_headers(JWT_KEY),
                "events": ["MESSAGES_UPDATE", "MESSAGES_UPSERT", "CONNECTION_UPDATE"]}})
            assert response.status_code in (200, 201), response.text


def rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


async def wait_rows(dsn: str, query: str, expected: Any, timeout: float = 20.0) -> Any:
    with trio.fail_after(timeout):
        while (got := rows(dsn, query)) != expected:
            await trio.sleep(0.1)
    return got


async def wait_messages(sandbox: Any, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    with trio.fail_after(timeout):
        while len(found := await sandbox.messages()) < count:
            await trio.sleep(0.1)
    return found
