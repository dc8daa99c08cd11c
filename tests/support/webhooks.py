"""A real HTTP endpoint that records what is posted to it (e.g. the sandbox's webhooks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class WebhookReceiver:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    status: int = 200  # what it answers
    answer: bytes = b"{}"
    content_type: bytes = b"application/json"
    _changed: trio.Event = field(default_factory=trio.Event)

    async def app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except ValueError:
            body = b"".join(chunks)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, body))
        self._changed.set()
        self._changed = trio.Event()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", self.content_type)]})
        await send({"type": "http.response.body", "body": self.answer})

    async def wait_for(self, match: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        with trio.fail_after(timeout):
            while True:
                for item in self.received:
                    if match(item):
                        return item
                await self._changed.wait()

    def events(self, name: str) -> list[Received]:
        return [r for r in self.received if isinstance(r.body, dict) and r.body.get("event") == name]


async def start_receiver(nursery: trio.Nursery) -> WebhookReceiver:
    """Listening on a free loopback port until the nursery is cancelled."""
    receiver = WebhookReceiver()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(lambda task_status: serve(receiver.app, config, mode="asgi",
                                                           task_status=task_status))
    receiver.url = binds[0] + "/webhooks/evolution"
    return receiver
