"""Evolution API sandbox: the gateway's contract on loopback, for development and tests.

    python -m oraclewad.services.sandbox --listen 127.0.0.1:8085 --api-key KEY

Behaves as Evolution does where a client can tell (docs/evolution.md lists the contract): apikey
auth after the instance-exists check, instances that start `close`, sendText that holds the call
for `delay` ms, the real error envelopes, webhooks with the configured headers (`jwt_key` -> an
HS256 Bearer JWT) retried like v2. Nothing reaches WhatsApp: sent messages are recorded.

Controls under /_sandbox/ (no apikey; loopback clients only) make an instance disconnect or get
banned, numbers not exist, sends fail or hang, acks and inbound messages arrive.
As a host program of the daemon it listens on the inherited fd 3 (LISTEN_FDS).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import logging
import os
import random
import re
import secrets
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import segno
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oraclewad.services.config import ConfigError
from oraclewad.services.evolution import sign_webhook
from oraclewad.services.notify import listen_http_fd

log = logging.getLogger("oraclewad.sandbox")

STATES = ("open", "connecting", "close", "refused")
FAULTS = ("error500", "hang", "accept_then_hang", "connection_closed")
ALL_EVENTS = (
    "APPLICATION_STARTUP", "QRCODE_UPDATED", "MESSAGES_SET", "MESSAGES_UPSERT", "MESSAGES_EDITED",
    "MESSAGES_UPDATE", "MESSAGES_DELETE", "SEND_MESSAGE", "CONTACTS_SET", "CONTACTS_UPSERT",
    "CONTACTS_UPDATE", "PRESENCE_UPDATE", "CHATS_SET", "CHATS_UPSERT", "CHATS_UPDATE", "CHATS_DELETE",
    "GROUPS_UPSERT", "GROUP_UPDATE", "GROUP_PARTICIPANTS_UPDATE", "CONNECTION_UPDATE", "LABELS_EDIT",
    "LABELS_ASSOCIATION", "CALL", "TYPEBOT_START", "TYPEBOT_CHANGE_STATUS", "REMOVE_INSTANCE",
    "LOGOUT_INSTANCE", "INSTANCE_CREATE", "INSTANCE_DELETE", "STATUS_INSTANCE",
)
# Evolution v2 does not retry these answers: the receiver said it will never accept the event.
NO_RETRY = frozenset({400, 401, 403, 404, 422})
MAX_DELIVERY_ATTEMPTS = 10
DELIVERY_TIMEOUT_S = 30.0
JID = "@s.whatsapp.net"


class Refused(Exception):
    """An Evolution error answer: {"status", "error", "response": {"message"}}."""

    def __init__(self, status: int, message: Any) -> None:
        self.status = status
        self.message = message


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error"}


def envelope(status: int, message: Any) -> JSONResponse:
    return JSONResponse({"status": status, "error": _REASONS.get(status, "Error"),
                         "response": {"message": message}}, status_code=status)


@dataclass
class Webhook:
    enabled: bool = False
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    by_events: bool = False
    base64: bool = False
    updated_at: str = ""

    def row(self, instance: Instance) -> dict[str, Any]:
        return {"id": instance.webhook_id, "url": self.url, "headers": self.headers, "enabled": self.enabled,
                "events": self.events, "webhookByEvents": self.by_events, "webhookBase64": self.base64,
                "createdAt": instance.created_at, "updatedAt": self.updated_at or instance.created_at,
                "instanceId": instance.id}


@dataclass
class Instance:
    name: str
    token: str
    state: str = "close"
    status_reason: int = 200
    owner: str = ""  # the instance's own number (digits) once paired
    profile_name: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    webhook_id: str = field(default_factory=lambda: secrets.token_hex(12))
    created_at: str = field(default_factory=lambda: _iso(time.time()))
    webhook: Webhook = field(default_factory=Webhook)
    qr_count: int = 0

    @property
    def owner_jid(self) -> str | None:
        return f"{self.owner}{JID}" if self.owner else None


@dataclass
class Fault:
    mode: str
    count: int  # < 0: forever
    instance: str | None = None


class Sandbox:
    """All of the sandbox's state; the HTTP app is a thin layer over it."""

    def __init__(self, api_key: str, *, api_version: int = 2, auto_pair_s: float | None = None,
                 retry_initial_s: float = 5.0, server_url: str = "http://127.0.0.1") -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.auto_pair_s = auto_pair_s
        self.retry_initial_s = retry_initial_s
        self.server_url = server_url
        self.instances: dict[str, Instance] = {}
        self.numbers: dict[str, bool] = {}   # digits -> on WhatsApp (default: yes)
        self.looked_up: set[str] = set()     # Evolution caches on-WhatsApp lookups (7 days)
        self.send_attempts: dict[str, int] = {}   # digits -> sendText calls that reached the number check
        self.faults: list[Fault] = []
        self.messages: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.nursery: trio.Nursery | None = None
        self.http: httpx.AsyncClient | None = None

    def reset(self) -> None:
        self.instances.clear()
        self.numbers.clear()
        self.looked_up.clear()
        self.send_attempts.clear()
        self.faults.clear()
        self.messages.clear()
        self.deliveries.clear()

    # ---- Evolution's guards -------------------------------------------------------------------

    def instance(self, name: str) -> Instance:
        inst = self.instances.get(name)
        if inst is None:
            raise Refused(404, [f'The "{name}" instance does not exist'])
        return inst

    def authorize(self, request: Request, inst: Instance | None = None) -> None:
        key = request.headers.get("apikey")
        if key and (secrets.compare_digest(key, self.api_key)
                    or (inst is not None and secrets.compare_digest(key, inst.token))):
            return
        raise Refused(401, "Unauthorized")

    def guarded(self, request: Request) -> Instance:
        """instance exists (404) -> apikey (401), Evolution's order."""
        inst = self.instance(request.path_params["instance"])
        self.authorize(request, inst)
        return inst

    # ---- faults and state ---------------------------------------------------------------------

    def take_fault(self, instance: str) -> str | None:
        for fault in self.faults:
            if fault.instance in (None, instance) and fault.count != 0:
                if fault.count > 0:
                    fault.count -= 1
                return fault.mode
        return None

    def set_state(self, inst: Instance, state: str, reason: int | None = None) -> None:
        inst.state = state
        inst.status_reason = reason if reason is not None else {"refused": 428}.get(state, 200)
        if state == "open" and not inst.owner:
            inst.owner = "5511" + "".join(random.choices("0123456789", k=9))
            inst.profile_name = inst.profile_name or inst.name
        data = {"instance": inst.name, "wuid": inst.owner_jid, "profileName": inst.profile_name,
                "state": state, "statusReason": inst.status_reason}
        self.emit(inst, "connection.update", data)
        if state == "close" and reason in (401, 402, 403, 406):
            self.emit(inst, "status.instance", {"instance": inst.name, "status": "closed"})
            self.emit(inst, "logout.instance", {"instance": inst.name})

    # ---- webhooks -----------------------------------------------------------------------------

    def emit(self, inst: Instance, event: str, data: dict[str, Any]) -> None:
        hook = inst.webhook
        name = event.replace(".", "_").replace("-", "_").upper()
        if not hook.enabled or not hook.url or name not in hook.events or self.nursery is None:
            return
        url = f"{hook.url.rstrip('/')}/{name.replace('_', '-').lower()}" if hook.by_events else hook.url
        headers = dict(hook.headers)
        jwt_key = headers.pop("jwt_key", None)
        body = {"event": event, "instance": inst.name, "data": data, "destination": hook.url,
                # Evolution's quirk: local time with a Z suffix.
                "date_time": datetime.now().isoformat(timespec="milliseconds") + "Z",
                "sender": inst.owner_jid, "server_url": self.server_url, "apikey": None}
        record = {"event": event, "instance": inst.name, "url": url, "data": data, "attempts": 0,
                  "status": None, "error": None}
        self.deliveries.append(record)
        # Events go out without waiting on each other, as Evolution's do: order is not guaranteed.
        self.nursery.start_soon(self._deliver, record, url, headers, jwt_key, body)

    async def _deliver(self, record: dict[str, Any], url: str, headers: dict[str, str],
                       jwt_key: str | None, body: dict[str, Any]) -> None:
        assert self.http is not None
        delay = self.retry_initial_s
        for attempt in range(1, MAX_DELIVERY_ATTEMPTS + 1):
            record["attempts"] = attempt
            sent = dict(headers)
            if jwt_key:  # signed at each attempt: the token expires after 600 s
                sent["Authorization"] = f"Bearer {sign_webhook(jwt_key)}"
            try:
                response = await self.http.post(url, json=body, headers=sent, timeout=DELIVERY_TIMEOUT_S)
            except httpx.HTTPError as e:
                record["status"], record["error"] = None, type(e).__name__
            else:
                record["status"], record["error"] = response.status_code, None
                if response.is_success or response.status_code in NO_RETRY:
                    return
            if attempt < MAX_DELIVERY_ATTEMPTS:
                await trio.sleep(min(delay, 300.0) * random.uniform(0.8, 1.2))
                delay *= 2


# ---- request handlers --------------------------------------------------------------------------

async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Refused(400, ["Unexpected token in JSON body"]) from None
    if not isinstance(body, dict):
        raise Refused(400, [["instance is not of a type(s) object"]])
    return body


def _digits(number: str) -> str:
    return re.sub(r"\D", "", number.split("@", 1)[0])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def _message_id() -> str:
    return "3EB0" + secrets.token_hex(8).upper()


def build_app(sb: Sandbox) -> Starlette:  # noqa: C901 (route closures over one sandbox; each is short)
    def handler(fn: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except Refused as r:
                return envelope(r.status, r.message)
        return wrapped

    def control(fn: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            client = request.client.host if request.client else ""
            try:
                loopback = ipaddress.ip_address(client).is_loopback
            except ValueError:
                loopback = client in ("", "unix")
            if not loopback:
                return JSONResponse({"error": "sandbox controls answer loopback clients only"}, 403)
            try:
                return await fn(request)
            except Refused as r:
                return JSONResponse({"error": r.message}, status_code=r.status)
        return wrapped

    # ---- Evolution routes ---------------------------------------------------------------------

    async def send_text(request: Request) -> Response:
        inst = sb.guarded(request)
        body = await _json(request)
        v1 = "textMessage" in body
        if "number" not in body:
            raise Refused(400, [['instance requires property "number"']])
        if v1:
            text_message = body.get("textMessage")
            text = text_message.get("text") if isinstance(text_message, dict) else None
            options = body.get("options") if isinstance(body.get("options"), dict) else {}
            delay = options.get("delay", 0)
        else:
            if "text" not in body:
                raise Refused(400, [['instance requires property "text"']])
            text, delay = body.get("text"), body.get("delay", 0)
        number = body["number"]
        if not isinstance(number, str) or not _digits(number):
            raise Refused(400, [['instance.number is not of a type(s) string']])
        if not isinstance(text, str) or not text.strip():
            raise Refused(400, ["Text is required"])
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise Refused(400, [['instance.delay is not of a type(s) integer']])
        digits = _digits(number)
        fault = sb.take_fault(inst.name)
        if fault == "error500":
            raise Refused(500, "Internal Server Error")
        if fault == "hang":
            await trio.sleep_forever()
        if fault == "connection_closed" or inst.state != "open":
            _connection_closed(sb, digits)
        sb.send_attempts[digits] = sb.send_attempts.get(digits, 0) + 1
        if not sb.numbers.get(digits, True):
            sb.looked_up.add(digits)
            raise Refused(400, [{"jid": f"{digits}{JID}", "exists": False, "number": number}])
        sb.looked_up.add(digits)
        await trio.sleep(delay / 1000)
        if sb.instances.get(inst.name) is not inst:
            # Deleted (or the sandbox reset) while "composing": nothing was sent. A send begun
            # before a test's reset must not land among the next test's messages.
            raise Refused(404, [f'The "{inst.name}" instance does not exist'])
        if inst.state != "open":  # the socket went down while "composing"
            raise Refused(400, ["Error: Connection Closed"])
        message_id = _message_id()
        now = time.time()
        remote_jid = number if "@" in number else f"{digits}{JID}"
        sb.messages.append({"id": message_id, "instance": inst.name, "number": digits,
                            "remote_jid": remote_jid,
                            "text": text, "delay": delay, "at": now,
                            "body": "v1" if v1 else "v2"})
        key = {"remoteJid": remote_jid, "fromMe": True, "id": message_id}
        sb.emit(inst, "send.message", {"key": key, "message": {"conversation": text}, "status": "PENDING"})
        _ack(sb, inst, message_id, remote_jid, "SERVER_ACK")
        if fault == "accept_then_hang":
            await trio.sleep_forever()
        if v1:
            answer = {"key": key, "message": {"extendedTextMessage": {"text": text}},
                      "messageTimestamp": str(int(now)), "status": "PENDING"}
        else:
            answer = {"key": key, "pushName": "", "status": "PENDING", "message": {"conversation": text},
                      "contextInfo": None, "messageType": "conversation", "messageTimestamp": int(now),
                      "instanceId": inst.id, "source": "unknown"}
        return JSONResponse(answer, status_code=201)

    async def create(request: Request) -> Response:
        body = await _json(request)
        name = body.get("instanceName")
        if isinstance(name, str) and name in sb.instances:  # Evolution checks this before the key
            raise Refused(403, [f'This name "{name}" is already in use.'])
        key = request.headers.get("apikey")
        if not key or not secrets.compare_digest(key, sb.api_key):
            raise Refused(401, "Unauthorized")
        if not isinstance(name, str) or not name:
            raise Refused(400, [['instance requires property "instanceName"']])
        if sb.api_version == 2 and body.get("integration") != "WHATSAPP-BAILEYS":
            raise Refused(400, ["Invalid integration"])
        token = body.get("token") if isinstance(body.get("token"), str) and body.get("token") else \
            str(uuid.uuid4()).upper()
        inst = Instance(name=name, token=token)
        if sb.api_version == 2 and isinstance(body.get("webhook"), dict):
            _store_webhook(inst, body["webhook"])
        elif sb.api_version == 1 and isinstance(body.get("webhook"), str):
            _store_webhook(inst, {"url": body["webhook"], "enabled": True, "events": body.get("events", []),
                                  "byEvents": bool(body.get("webhook_by_events"))})
        sb.instances[name] = inst
        answer: dict[str, Any] = {
            "instance": {"instanceName": name, "instanceId": inst.id, "integration": "WHATSAPP-BAILEYS",
                         "webhookWaBusiness": None, "accessTokenWaBusiness": "", "status": inst.state},
            "hash": token if sb.api_version == 2 else {"apikey": token},
            "webhook": _webhook_summary(inst) if inst.webhook.enabled else {},
            "websocket": {}, "rabbitmq": {}, "sqs": {},
            "settings": {"rejectCall": False, "msgCall": "", "groupsIgnore": False, "alwaysOnline": False,
                         "readMessages": False, "readStatus": False, "syncFullHistory": False},
        }
        if body.get("qrcode") is True:
            answer["qrcode"] = _qr(sb, inst, body.get("number"))
        return JSONResponse(answer, status_code=201)

    async def connect(request: Request) -> Response:
        inst = sb.guarded(request)
        if inst.state == "open":
            return JSONResponse({"instance": {"instanceName": inst.name, "state": "open"}})
        return JSONResponse(_qr(sb, inst, request.query_params.get("number")))

    async def connection_state(request: Request) -> Response:
        inst = sb.guarded(request)
        return JSONResponse({"instance": {"instanceName": inst.name, "state": inst.state}})

    async def fetch_instances(request: Request) -> Response:
        key = request.headers.get("apikey")
        if not key:
            raise Refused(401, "Unauthorized")
        name = request.query_params.get("instanceName")
        if secrets.compare_digest(key, sb.api_key):
            if name is not None and name not in sb.instances:
                raise Refused(404, f'Instance "{name}" not found')
            rows = [i for i in sb.instances.values() if name in (None, i.name)]
        else:
            rows = [i for i in sb.instances.values()
                    if secrets.compare_digest(key, i.token) and name in (None, i.name)]
            if not rows:
                raise Refused(401, "Unauthorized")
        return JSONResponse([_instance_row(sb, i) for i in rows])

    async def logout(request: Request) -> Response:
        inst = sb.guarded(request)
        if inst.state == "close":
            raise Refused(400, ['The "' + inst.name + '" instance is not connected'])
        sb.set_state(inst, "close", 401)
        return JSONResponse({"status": "SUCCESS", "error": False,
                             "response": {"message": "Instance logged out"}})

    async def delete(request: Request) -> Response:
        inst = sb.guarded(request)
        del sb.instances[inst.name]
        return JSONResponse({"status": "SUCCESS", "error": False,
                             "response": {"message": "Instance deleted"}})

    async def set_webhook(request: Request) -> Response:
        inst = sb.guarded(request)
        body = await _json(request)
        if sb.api_version == 2:
            hook = body.get("webhook")
            if not isinstance(hook, dict):
                raise Refused(400, [['instance requires property "webhook"']])
        else:
            hook = {"enabled": body.get("enabled"), "url": body.get("url"), "events": body.get("events", []),
                    "byEvents": body.get("webhook_by_events", False),
                    "base64": body.get("webhook_base64", False),
                    "headers": {}}
        if not isinstance(hook.get("enabled"), bool):
            raise Refused(400, [['instance.webhook requires property "enabled"']])
        if hook["enabled"] and not (isinstance(hook.get("url"), str)
                                    and re.match(r"^https?://", hook["url"])):
            raise Refused(400, [['instance.webhook.url does not match pattern "^https?://"']])
        events = hook.get("events", [])
        if not isinstance(events, list) or any(e not in ALL_EVENTS for e in events):
            raise Refused(400, [[f"instance.webhook.events[{i}] is not one of enum values"
                                 for i, e in enumerate(events if isinstance(events, list) else [])
                                 if e not in ALL_EVENTS] or ["instance.webhook.events is not an array"]])
        headers = hook.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise Refused(400, [["instance.webhook.headers is not of a type(s) object"]])
        _store_webhook(inst, hook)
        return JSONResponse(inst.webhook.row(inst), status_code=201)

    async def find_webhook(request: Request) -> Response:
        inst = sb.guarded(request)
        if not inst.webhook.url:
            return JSONResponse(None)
        return JSONResponse(inst.webhook.row(inst))

    # ---- /_sandbox/ controls ------------------------------------------------------------------

    async def messages(request: Request) -> Response:
        if request.method == "DELETE":
            sb.messages.clear()
            return JSONResponse({"cleared": True})
        instance = request.query_params.get("instance")
        return JSONResponse([m for m in sb.messages if instance in (None, m["instance"])])

    async def attempts(request: Request) -> Response:
        return JSONResponse(sb.send_attempts)

    async def reset(request: Request) -> Response:
        sb.reset()
        return JSONResponse({"reset": True})

    async def make_instance(request: Request) -> Response:
        body = await _json(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise Refused(400, "name: required (the instance name)")
        state = body.get("state", "close")
        if state not in STATES:
            raise Refused(400, f"state: must be one of {', '.join(STATES)}")
        token = body.get("token") or str(uuid.uuid4()).upper()
        inst = sb.instances.setdefault(name, Instance(name=name, token=token))
        if isinstance(body.get("webhook"), dict):
            _store_webhook(inst, {"enabled": True, **body["webhook"]})
        sb.set_state(inst, state)
        return JSONResponse({"name": inst.name, "token": inst.token, "state": inst.state}, status_code=201)

    async def instance_state(request: Request) -> Response:
        name = request.path_params["instance"]
        inst = sb.instances.get(name)
        if inst is None:
            raise Refused(404, f"no instance {name!r}: create it with POST /_sandbox/instances")
        body = await _json(request)
        state = body.get("state")
        if state not in STATES:
            raise Refused(400, f"state: must be one of {', '.join(STATES)}")
        reason = body.get("statusReason")
        if reason is not None and (not isinstance(reason, int) or isinstance(reason, bool)):
            raise Refused(400, "statusReason: must be an integer such as 401, 402, 403 or 406")
        sb.set_state(inst, state, reason)
        return JSONResponse({"name": inst.name, "state": inst.state, "statusReason": inst.status_reason})

    async def numbers(request: Request) -> Response:
        body = await _json(request)
        digits = _digits(str(body.get("number", "")))
        if not digits or not isinstance(body.get("exists"), bool):
            raise Refused(400, 'body must be {"number": "55...", "exists": true|false}')
        sb.numbers[digits] = body["exists"]
        return JSONResponse({"number": digits, "exists": body["exists"]})

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            sb.faults.clear()
            return JSONResponse({"cleared": True})
        if request.method == "GET":
            return JSONResponse([vars(f) for f in sb.faults])
        body = await _json(request)
        mode, count, instance = body.get("mode"), body.get("count", 1), body.get("instance")
        if mode not in FAULTS:
            raise Refused(400, f"mode: must be one of {', '.join(FAULTS)}")
        if not isinstance(count, int) or isinstance(count, bool):
            raise Refused(400, "count: must be an integer (-1 = until cleared)")
        if instance is not None and not isinstance(instance, str):
            raise Refused(400, "instance: must be an instance name")
        sb.faults.append(Fault(mode=mode, count=count, instance=instance))
        return JSONResponse({"mode": mode, "count": count, "instance": instance}, status_code=201)

    async def acks(request: Request) -> Response:
        body = await _json(request)
        key_id, status = body.get("keyId"), body.get("status")
        statuses = ("ERROR", "PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED", "DELETED")
        if status not in statuses:
            raise Refused(400, f"status: must be one of {', '.join(statuses)}")
        sent = next((m for m in sb.messages if m["id"] == key_id), None)
        if sent is None:
            raise Refused(404, f"keyId: no sent message {key_id!r}")
        _ack(sb, sb.instance(sent["instance"]), sent["id"], sent["remote_jid"], status)
        return JSONResponse({"keyId": key_id, "status": status})

    async def inject_upsert(request: Request) -> Response:
        body = await _json(request)
        inst = sb.instances.get(str(body.get("instance")))
        if inst is None:
            raise Refused(404, f"instance: no instance {body.get('instance')!r}")
        digits = _digits(str(body.get("from", "")))
        text = body.get("text", "")
        if not digits or not isinstance(text, str):
            raise Refused(400, 'body needs "from" (the contact\'s number) and "text"')
        from_me = bool(body.get("fromMe", False))
        phone_jid = f"{digits}{JID}"
        key: dict[str, Any] = {"remoteJid": phone_jid, "fromMe": from_me, "id": _message_id()}
        lid = body.get("lid")
        if lid:
            lid_digits = lid if isinstance(lid, str) else "".join(random.choices("0123456789", k=15))
            key.update(remoteJid=f"{lid_digits}@lid", remoteJidAlt=phone_jid, addressingMode="lid")
        data = {"key": key, "pushName": body.get("pushName", "Cliente"), "status": "DELIVERY_ACK",
                "message": {"conversation": text}, "contextInfo": None, "messageType": "conversation",
                "messageTimestamp": int(time.time()), "instanceId": inst.id,
                "source": "android" if not from_me else "web"}
        sb.emit(inst, "messages.upsert", data)
        return JSONResponse(data, status_code=201)

    async def deliveries(request: Request) -> Response:
        if request.method == "DELETE":
            sb.deliveries.clear()
            return JSONResponse({"cleared": True})
        return JSONResponse(sb.deliveries)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return envelope(exc.status_code, [f"Cannot {request.method} {request.url.path}"])

    i = "{instance}"
    routes = [
        Route(f"/message/sendText/{i}", handler(send_text), methods=["POST"]),
        Route("/instance/create", handler(create), methods=["POST"]),
        Route(f"/instance/connect/{i}", handler(connect), methods=["GET"]),
        Route(f"/instance/connectionState/{i}", handler(connection_state), methods=["GET"]),
        Route("/instance/fetchInstances", handler(fetch_instances), methods=["GET"]),
        Route(f"/instance/logout/{i}", handler(logout), methods=["DELETE"]),
        Route(f"/instance/delete/{i}", handler(delete), methods=["DELETE"]),
        Route(f"/webhook/set/{i}", handler(set_webhook), methods=["POST"]),
        Route(f"/webhook/find/{i}", handler(find_webhook), methods=["GET"]),
        Route("/_sandbox/messages", control(messages), methods=["GET", "DELETE"]),
        Route("/_sandbox/reset", control(reset), methods=["POST"]),
        Route("/_sandbox/instances", control(make_instance), methods=["POST"]),
        Route(f"/_sandbox/instances/{i}/state", control(instance_state), methods=["POST"]),
        Route("/_sandbox/numbers", control(numbers), methods=["POST"]),
        Route("/_sandbox/attempts", control(attempts), methods=["GET"]),
        Route("/_sandbox/faults", control(faults), methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/acks", control(acks), methods=["POST"]),
        Route("/_sandbox/inject/upsert", control(inject_upsert), methods=["POST"]),
        Route("/_sandbox/webhooks", control(deliveries), methods=["GET", "DELETE"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


def _connection_closed(sb: Sandbox, digits: str) -> None:
    # Uncached number: the onWhatsApp lookup fails first (500); cached: the send itself fails (400).
    if digits in sb.looked_up:
        raise Refused(400, ["Error: Connection Closed"])
    raise Refused(500, "Connection Closed")


def _ack(sb: Sandbox, inst: Instance, message_id: str, remote_jid: str, status: str) -> None:
    if sb.api_version == 2:
        data: dict[str, Any] = {"keyId": message_id, "remoteJid": remote_jid, "fromMe": True,
                                "participant": None, "status": status, "instanceId": inst.id,
                                "messageId": secrets.token_hex(12)}
    else:
        data = {"remoteJid": remote_jid, "fromMe": True, "id": message_id, "participant": None,
                "status": status, "datetime": int(time.time() * 1000), "owner": inst.name}
    sb.emit(inst, "messages.update", data)


def _store_webhook(inst: Instance, hook: dict[str, Any]) -> None:
    enabled = bool(hook.get("enabled", True))
    events = list(hook.get("events") or [])
    inst.webhook = Webhook(
        enabled=enabled, url=str(hook.get("url") or ""), headers=dict(hook.get("headers") or {}),
        # events: [] with enabled means every event; disabled clears them.
        events=(events or list(ALL_EVENTS)) if enabled else [],
        by_events=bool(hook.get("byEvents", False)), base64=bool(hook.get("base64", False)),
        updated_at=_iso(time.time()))


def _webhook_summary(inst: Instance) -> dict[str, Any]:
    return {"webhookUrl": inst.webhook.url, "webhookHeaders": inst.webhook.headers,
            "webhookByEvents": inst.webhook.by_events, "webhookBase64": inst.webhook.base64}


def _instance_row(sb: Sandbox, inst: Instance) -> dict[str, Any]:
    if sb.api_version == 1:
        return {"instance": {"instanceName": inst.name, "instanceId": inst.id, "owner": inst.owner_jid,
                             "profileName": inst.profile_name or None, "profilePictureUrl": None,
                             "profileStatus": "", "status": inst.state, "serverUrl": sb.server_url,
                             "apikey": inst.token, "integration": {"integration": "WHATSAPP-BAILEYS"}}}
    return {"id": inst.id, "name": inst.name, "connectionStatus": inst.state, "ownerJid": inst.owner_jid,
            "profileName": inst.profile_name or None, "profilePicUrl": None,
            "integration": "WHATSAPP-BAILEYS",
            "number": inst.owner or None, "token": inst.token, "clientName": "sandbox",
            "disconnectionReasonCode": inst.status_reason if inst.state == "close" else None,
            "createdAt": inst.created_at, "updatedAt": inst.created_at}


def _qr(sb: Sandbox, inst: Instance, number: str | None) -> dict[str, Any]:
    if inst.state == "close":
        sb.set_state(inst, "connecting")
        if sb.auto_pair_s is not None and sb.nursery is not None:
            sb.nursery.start_soon(_auto_pair, sb, inst)
    inst.qr_count += 1
    code = f"2@{base64.b64encode(secrets.token_bytes(24)).decode()},{inst.id},{inst.qr_count}"
    pairing = None
    if number:
        pairing = "".join(random.choices("ABCDEFGHJKLMNPQRSTVWXYZ0123456789", k=8))
    png = segno.make(code, error="l").png_data_uri(scale=4)
    answer = {"pairingCode": pairing, "code": code, "base64": png,
              "count": inst.qr_count}
    sb.emit(inst, "qrcode.updated", {"qrcode": {"instance": inst.name, **answer}})
    return answer


async def _auto_pair(sb: Sandbox, inst: Instance) -> None:
    """--auto-pair S: as if someone scanned the QR code S seconds after connect."""
    assert sb.auto_pair_s is not None
    await trio.sleep(sb.auto_pair_s)
    if sb.instances.get(inst.name) is inst and inst.state == "connecting":
        sb.set_state(inst, "open")


# ---- process -----------------------------------------------------------------------------------

def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m oraclewad.services.sandbox",
                                     description="Evolution API sandbox (development and tests)")
    parser.add_argument("--listen", default="127.0.0.1:8085",
                        help="host:port (ignored when the daemon passes a socket, LISTEN_FDS)")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="the global API key (default: $OWA_SANDBOX_API_KEY)")
    key.add_argument("--api-key-file", type=Path, help="read the global API key from this file")
    parser.add_argument("--api-version", type=int, choices=(1, 2), default=2,
                        help="which Evolution to play for create/webhook bodies (sendText takes both)")
    parser.add_argument("--instance", action="append", default=[], metavar="NAME[:STATE]",
                        help="an instance that exists at start (state default open); repeatable")
    parser.add_argument("--auto-pair", type=float, default=None, metavar="SECONDS",
                        help="after /instance/connect, become open this many seconds later")
    parser.add_argument("--webhook-retry-initial", type=float, default=5.0, metavar="SECONDS",
                        help="first webhook retry delay, doubling to 300 s (Evolution v2: 5 s)")
    return parser.parse_args(argv)


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file is not None:
        try:
            value = args.api_key_file.read_text().strip()
        except OSError as e:
            raise SystemExit(f"--api-key-file: cannot read {args.api_key_file}: {e.strerror}") from None
    else:
        value = args.api_key or os.environ.get("OWA_SANDBOX_API_KEY", "")
    if not value:
        raise SystemExit("no API key: pass --api-key, --api-key-file or set OWA_SANDBOX_API_KEY")
    return value


async def _amain(sb: Sandbox, bind: str, ready: trio.Event | None = None) -> None:
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.include_server_header = False
    config.graceful_timeout = 1.0
    stop = trio.Event()
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        sb.nursery, sb.http = nursery, http

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for _ in received:
                    stop.set()
                    return

        nursery.start_soon(signals)
        binds = await nursery.start(lambda task_status: serve(build_app(sb), config, mode="asgi",
                                                               shutdown_trigger=stop.wait,
                                                               task_status=task_status))
        print(f"evolution sandbox listening on {', '.join(binds)}", file=sys.stderr, flush=True)
        await stop.wait()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        fd = listen_http_fd(os.environ)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 78
    sb = Sandbox(_api_key(args), api_version=args.api_version, auto_pair_s=args.auto_pair,
                 retry_initial_s=args.webhook_retry_initial)
    for spec in args.instance:
        name, _, state = spec.partition(":")
        if state and state not in STATES:
            raise SystemExit(f"--instance {spec}: state must be one of {', '.join(STATES)}")
        inst = sb.instances.setdefault(name, Instance(name=name, token=str(uuid.uuid4()).upper()))
        sb.set_state(inst, state or "open")
    bind = f"fd://{fd}" if fd is not None else args.listen
    sb.server_url = "http://" + (args.listen if fd is None else "127.0.0.1")
    trio.run(_amain, sb, bind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
