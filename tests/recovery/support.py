"""Helpers for the recovery tests: configs, signed requests, database peeks."""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from oraclewad.services.recovery.shopauth import hmac_signature, standard_signature
from tests.services.helpers import Child

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a valid base64 body
TOKEN = "static-token-" + "x" * 20


def admin_dsn_external() -> str:
    return os.environ.get("OWA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def recovery_config(dsn: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tenant": "imperio", "service": "recovery", "display_name": "Império",
        "http": {"host": "127.0.0.1", "port": 0},
        "postgres": {"dsn": dsn, "pool_max": 4},
        "webhook_secret": SECRET, "webhook_token": TOKEN,
        "recovery": {"typing_delay_ms": 0, "min_gap": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@dataclass
class RecoveryChild:
    process: Child
    sock: Any
    port: int
    config: dict[str, Any]
    admin_socket: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def order(event: str = "order.expired", order_id: str | None = None, *, phone: str = "(11) 98765-4321",
          name: str = "Maria Silva", total: Any = 1234.56, **data: Any) -> dict[str, Any]:
    body = {"event": event, "timestamp": int(time.time() * 1000), "data": {
        "id": order_id or f"ord-{uuid.uuid4().hex[:10]}", "product": {"title": "Rifa Moto 0km"},
        "user": {"name": name, "phone": phone, "email": "maria@example.com"},
        "pixCode": "00020126580014br.gov.bcb.pix0136abc", "quantity": 2, "total": total,
        "expirationAt": "2026-12-01T17:30:00Z", "createdAt": "2026-12-01T17:00:00Z"}}
    body["data"].update(data)
    return body


def hmac_headers(body: bytes, secret: str = SECRET, *, at_ms: int | None = None) -> dict[str, str]:
    stamp = at_ms if at_ms is not None else int(time.time() * 1000)
    return {"content-type": "application/json", "x-webhook-timestamp": str(stamp),
            "x-webhook-signature": hmac_signature(secret, stamp, body)}


def standard_headers(body: bytes, secret: str = SECRET, *, msg_id: str | None = None,
                     at: int | None = None, extra_signatures: tuple[str, ...] = ()) -> dict[str, str]:
    stamp = at if at is not None else int(time.time())
    msg_id = msg_id or "msg_" + secrets.token_hex(8)
    sig = standard_signature(secret, msg_id, stamp, body)
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": " ".join((*extra_signatures, sig))}


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


async def post_order(client: httpx.AsyncClient, doc: dict[str, Any], scheme: str = "hmac",
                     **kw: Any) -> httpx.Response:
    body = encode(doc)
    headers = hmac_headers(body, **kw) if scheme == "hmac" else standard_headers(body, **kw)
    return await client.post("/webhooks/orders", content=body, headers=headers)


def rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()
