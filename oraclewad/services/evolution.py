"""Evolution API client (httpx on trio) and the classification of every way a call can fail.

Evolution answers errors as `{"status": N, "error": "...", "response": {"message": M}}` where M is a
string, a list of strings, a list of lists (schema validation) or a list of dicts (the number lookup
`{"jid", "exists": false, "number"}`). `EvolutionError.kind` says what a sender should do about it.

Webhooks from Evolution are authenticated with `headers.jwt_key` (see `webhook_headers` and
`verify_webhook`): Evolution then sends `Authorization: Bearer <HS256 JWT>` that expires after
600 s, so the key itself never travels with an event.
"""

from __future__ import annotations

import enum
import functools
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jwt

V1, V2 = 1, 2
INTEGRATION = "WHATSAPP-BAILEYS"
# What a service needs from its instances: acks, connection state, inbound messages (opt-outs).
DEFAULT_EVENTS = ("MESSAGES_UPSERT", "MESSAGES_UPDATE", "CONNECTION_UPDATE", "SEND_MESSAGE")
JWT_CLAIMS = {"app": "evolution", "action": "webhook"}
JWT_LEEWAY_S = 30


class FailureKind(enum.StrEnum):
    NOT_ON_WHATSAPP = "not_on_whatsapp"      # permanent: never retried (remember the number)
    CONNECTION_CLOSED = "connection_closed"  # instance unusable now: retry later on another instance
    UNAUTHORIZED = "unauthorized"            # configuration error: alert, no retry
    TRANSIENT = "transient"                  # 5xx / connect error before the request was sent: backoff
    AMBIGUOUS = "ambiguous"                  # timeout/disconnect after the request was sent: `uncertain`
    REJECTED = "rejected"                    # other 4xx (validation, unknown instance): permanent


class EvolutionError(Exception):
    """A failed call. messages: the envelope's message flattened to strings; details: its dicts."""

    def __init__(self, kind: FailureKind, status: int | None, messages: list[str],
                 details: list[dict[str, Any]] | None = None, *, operation: str = "") -> None:
        self.kind = kind
        self.status = status
        self.messages = messages
        self.details = details or []
        self.operation = operation
        where = f"{operation}: " if operation else ""
        code = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{where}{kind} ({code}): {'; '.join(messages) or 'no message'}")


@dataclass(frozen=True)
class SentMessage:
    message_id: str  # key.id: what messages.update reports as keyId
    remote_jid: str
    status: str      # "PENDING" as Evolution answers a send


@dataclass(frozen=True)
class ConnectInfo:
    state: str                # "open" when already paired, else "connecting"/"close"
    code: str | None = None   # the QR code's text (render it as a QR code)
    base64: str | None = None  # the same QR as a data:image/png;base64 URL
    pairing_code: str | None = None  # only when connect was given the phone number
    count: int | None = None


def flatten_messages(message: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The envelope's `response.message` in any of its shapes -> (strings, dict entries)."""
    texts: list[str] = []
    details: list[dict[str, Any]] = []

    def walk(item: Any) -> None:
        if item is None:
            return
        if isinstance(item, list | tuple):
            for sub in item:
                walk(sub)
        elif isinstance(item, dict):
            details.append(item)
            if item.get("exists") is False:
                texts.append(f"{item.get('number') or item.get('jid')} is not on WhatsApp")
            else:
                texts.append(json.dumps(item, sort_keys=True, ensure_ascii=False))
        else:
            texts.append(str(item))

    walk(message)
    return texts, details


def _envelope(response: httpx.Response) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return ([" ".join(text.split())[:200]] if text else []), []
    if isinstance(body, dict):
        inner = body.get("response")
        if isinstance(inner, dict) and "message" in inner:
            return flatten_messages(inner["message"])
        if "message" in body:  # framework errors (unknown route) put it at the top
            return flatten_messages(body["message"])
        if isinstance(body.get("error"), str):
            return [body["error"]], []
    return flatten_messages(body)


def classify(status: int, messages: list[str], details: list[dict[str, Any]]) -> FailureKind:
    """What a sender should do about an error answer (see the module docstring)."""
    if any("connection closed" in m.lower() for m in messages):
        return FailureKind.CONNECTION_CLOSED
    if any(d.get("exists") is False for d in details):
        return FailureKind.NOT_ON_WHATSAPP
    if status == 401:
        return FailureKind.UNAUTHORIZED
    if status == 403 and not any("already in use" in m for m in messages):
        return FailureKind.UNAUTHORIZED
    if status >= 500 or status in (408, 429):
        return FailureKind.TRANSIENT
    return FailureKind.REJECTED


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """The verifying context httpx would build, once per process. A fork template builds it before
    forking, so its children share the parsed CA bundle instead of each parsing its own (about
    0.8 MiB per client, in every child)."""
    return httpx.create_ssl_context()


class EvolutionClient:
    """One Evolution server, one API key. Every method raises EvolutionError on failure."""

    def __init__(self, base_url: str, api_key: str, *, api_version: int = V2, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if api_version not in (V1, V2):
            raise ValueError(f"api_version must be 1 or 2, not {api_version!r}")
        self.api_version = api_version
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers={"apikey": api_key},
                                       timeout=timeout, transport=transport, verify=shared_tls())

    async def __aenter__(self) -> EvolutionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, operation: str, method: str, path: str, *, json_body: Any = None,
                    params: Mapping[str, str] | None = None, timeout: float | None = None) -> Any:
        try:
            response = await self._http.request(method, path, json=json_body, params=params,
                                                timeout=self.timeout if timeout is None else timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            # Nothing left this process: safe to retry.
            raise EvolutionError(FailureKind.TRANSIENT, None, [_describe(e)], operation=operation) from None
        except httpx.TransportError as e:
            # Read timeout, reset or a dropped connection after the request went out: it may have
            # been carried out.
            raise EvolutionError(FailureKind.AMBIGUOUS, None, [_describe(e)], operation=operation) from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise EvolutionError(FailureKind.AMBIGUOUS, response.status_code,
                                     ["answer is not JSON"], operation=operation) from None
        messages, details = _envelope(response)
        raise EvolutionError(classify(response.status_code, messages, details), response.status_code,
                             messages, details, operation=operation)

    # ---- messages -----------------------------------------------------------------------------

    async def send_text(self, instance: str, number: str, text: str, *, delay_ms: int = 0,
                        link_preview: bool = False) -> SentMessage:
        """Evolution holds the call for `delay_ms` ("composing") before sending, so the HTTP timeout
        is that delay plus the client's timeout."""
        if self.api_version == V2:
            body: dict[str, Any] = {"number": number, "text": text, "delay": delay_ms,
                                    "linkPreview": link_preview}
        else:
            body = {"number": number, "textMessage": {"text": text},
                    "options": {"delay": delay_ms, "presence": "composing", "linkPreview": link_preview}}
        answer = await self._call("sendText", "POST", f"/message/sendText/{_seg(instance)}", json_body=body,
                                  timeout=self.timeout + delay_ms / 1000)
        key = answer.get("key") if isinstance(answer, dict) else None
        if not isinstance(key, dict) or not key.get("id"):
            # Sent (2xx) but without an id we cannot follow it: the caller must not resend blindly.
            raise EvolutionError(FailureKind.AMBIGUOUS, 201, ["answer has no key.id"], operation="sendText")
        return SentMessage(message_id=str(key["id"]), remote_jid=str(key.get("remoteJid", "")),
                           status=str(answer.get("status") or "PENDING"))

    # ---- instances ----------------------------------------------------------------------------

    async def connection_state(self, instance: str) -> str:
        answer = await self._call("connectionState", "GET", f"/instance/connectionState/{_seg(instance)}")
        state = (answer.get("instance") or {}).get("state") if isinstance(answer, dict) else None
        return str(state or "unknown")

    async def fetch_instances(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every instance the key may see (one when `name` is given). v2 rows carry `name` and
        `connectionStatus`; v1.8 rows are `{"instance": {"instanceName", "status", ...}}`."""
        params = {"instanceName": name} if name else None
        answer = await self._call("fetchInstances", "GET", "/instance/fetchInstances", params=params)
        if isinstance(answer, dict):
            answer = [answer]
        return [row for row in answer if isinstance(row, dict)] if isinstance(answer, list) else []

    async def create_instance(self, name: str, *, webhook_url: str | None = None,
                              webhook_headers: dict[str, str] | None = None,
                              events: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"instanceName": name, "qrcode": False}
        if self.api_version == V2:
            body["integration"] = INTEGRATION
            if webhook_url:
                body["webhook"] = {"url": webhook_url, "byEvents": False, "base64": False,
                                   "headers": webhook_headers or {},
                                   "events": list(events or DEFAULT_EVENTS)}
        elif webhook_url:
            body.update(webhook=webhook_url, webhook_by_events=False,
                        events=list(events or DEFAULT_EVENTS))
        return await self._call("create", "POST", "/instance/create", json_body=body)

    async def connect(self, instance: str, *, number: str | None = None) -> ConnectInfo:
        """Start pairing. With `number` (digits) Evolution also issues a pairing code."""
        params = {"number": number} if number else None
        answer = await self._call("connect", "GET", f"/instance/connect/{_seg(instance)}", params=params)
        if not isinstance(answer, dict):
            return ConnectInfo(state="unknown")
        inner = answer.get("instance")
        if isinstance(inner, dict) and (inner.get("state") or inner.get("status")):
            return ConnectInfo(state=str(inner.get("state") or inner.get("status")))
        qr = answer.get("qrcode") if isinstance(answer.get("qrcode"), dict) else answer
        return ConnectInfo(state="connecting", code=qr.get("code"), base64=qr.get("base64"),
                           pairing_code=qr.get("pairingCode"), count=qr.get("count"))

    async def logout(self, instance: str) -> dict[str, Any]:
        return await self._call("logout", "DELETE", f"/instance/logout/{_seg(instance)}")

    async def delete_instance(self, instance: str) -> dict[str, Any]:
        return await self._call("delete", "DELETE", f"/instance/delete/{_seg(instance)}")

    # ---- webhooks -----------------------------------------------------------------------------

    async def set_webhook(self, instance: str, url: str, headers: dict[str, str],
                          events: list[str]) -> dict[str, Any]:
        if self.api_version == V2:
            body: dict[str, Any] = {"webhook": {"enabled": True, "url": url, "headers": headers,
                                                "byEvents": False, "base64": False, "events": events}}
        else:
            body = {"enabled": True, "url": url, "events": events, "webhook_by_events": False,
                    "webhook_base64": False}
        return await self._call("setWebhook", "POST", f"/webhook/set/{_seg(instance)}", json_body=body)

    async def find_webhook(self, instance: str) -> dict[str, Any]:
        answer = await self._call("findWebhook", "GET", f"/webhook/find/{_seg(instance)}")
        return answer if isinstance(answer, dict) else {}


# ---- authenticating Evolution's webhooks ------------------------------------------------------

def webhook_headers(jwt_key: str) -> dict[str, str]:
    """Headers to register with an instance's webhook: Evolution signs each call with this key."""
    return {"jwt_key": jwt_key}


def verify_webhook(authorization: str | None, jwt_key: str, *, now: float | None = None) -> bool:
    """True when `Authorization` is `Bearer <JWT>` signed with jwt_key (HS256), unexpired, and
    carrying Evolution's webhook claims. Constant-time under PyJWT's HMAC compare."""
    if not authorization or not jwt_key:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        claims = jwt.decode(token.strip(), jwt_key, algorithms=["HS256"], leeway=JWT_LEEWAY_S,
                            options={"require": ["exp", "iat"], "verify_iat": False,
                                     "verify_exp": now is None})
    except jwt.PyJWTError:
        return False
    if now is not None and not claims["exp"] + JWT_LEEWAY_S >= now:
        return False
    return all(claims.get(k) == v for k, v in JWT_CLAIMS.items())


def sign_webhook(jwt_key: str, *, now: float | None = None) -> str:
    """The JWT Evolution sends (used by the sandbox and by tests)."""
    iat = int(time.time() if now is None else now)
    return jwt.encode({"iat": iat, "exp": iat + 600, **JWT_CLAIMS}, jwt_key, algorithm="HS256")


def _seg(name: str) -> str:
    return quote(name, safe="")


def _describe(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
