"""Helpers for the recovery tests: configs, signed requests, database peeks."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

import httpx

from oraclewad.services.recovery.shopauth import hmac_signature, standard_signature
from tests.services.sending import merged, rows, service_config  # noqa: F401  (rows: for the tests)

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a valid base64 body
TOKEN = "static-token-" + "x" * 20


def recovery_config(dsn: str, **overrides: Any) -> dict[str, Any]:
    return merged(service_config("recovery", dsn, webhook_secret=SECRET, webhook_token=TOKEN,
                                 recovery={"typing_delay_ms": 0, "min_gap": 0}), overrides)


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
