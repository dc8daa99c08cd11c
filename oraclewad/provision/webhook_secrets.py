"""Each tenant's shop-webhook credentials, `secrets/<tenant>.webhook.json` (0600, written atomically).

    {"current": "whsec_...", "token": "...", "previous": [{"secret": "whsec_...", "until": 1767225600.0}]}

`current` signs both schemes (HMAC `X-Webhook-Signature` and Standard Webhooks); `token` is the
static `X-Auth-Webhook` value, used only when the tenant turns it on. A rotation keeps the old
secret (and token) working until `until`, so the shop can be switched over without a lost event.
A tenant made before this file existed has `<tenant>.webhook.key`: its value stays the current secret.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oraclewad.files import write_atomic
from oraclewad.tenants.ids import id_key

DEFAULT_OVERLAP_S = 24 * 3600.0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class WebhookCredentials:
    current: str = field(repr=False)
    token: str = field(repr=False)
    previous: tuple[tuple[str, str, float], ...] = field(default=(), repr=False)  # (secret, token, until)

    def child_config(self, now: float) -> dict[str, Any]:
        live = [p for p in self.previous if p[2] > now]
        return {
            "webhook_secret": self.current,
            "webhook_secrets": [{"secret": self.current, "until": None},
                                *({"secret": s, "until": until} for s, _, until in live)],
            "webhook_token": self.token,
            "webhook_tokens_previous": [{"token": t, "until": until} for _, t, until in live],
        }


class WebhookSecrets:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, tenant_id: str) -> Path:
        return self.directory / f"{id_key(tenant_id)}.webhook.json"

    def get(self, tenant_id: str) -> WebhookCredentials:
        """The tenant's credentials, generated (and stored first) when it has none."""
        path = self.path(tenant_id)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            previous = tuple((str(p["secret"]), str(p.get("token", "")), float(p["until"]))
                             for p in doc.get("previous", []))
            return WebhookCredentials(str(doc["current"]), str(doc["token"]), previous)
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            # A damaged file must not silently replace a secret the shop uses: keep it for a human.
            os.replace(path, path.with_name(path.name + ".corrupt"))
        legacy = self.directory / f"{id_key(tenant_id)}.webhook.key"
        current = legacy.read_text().strip() if legacy.exists() else new_secret()
        creds = WebhookCredentials(current or new_secret(), secrets.token_urlsafe(32))
        self._save(tenant_id, creds)
        return creds

    def rotate(self, tenant_id: str, overlap_s: float, now: float) -> WebhookCredentials:
        """A new secret and token; the old ones keep working for `overlap_s` seconds (0: at once stop).
        Older secrets still in an earlier overlap get no longer than that either (a leak stops them all)."""
        old = self.get(tenant_id)
        until = now + overlap_s
        kept = tuple((s, t, min(u, until)) for s, t, u in old.previous if min(u, until) > now)
        if overlap_s > 0:
            kept = ((old.current, old.token, until), *kept)
        creds = WebhookCredentials(new_secret(), secrets.token_urlsafe(32), kept)
        self._save(tenant_id, creds)
        return creds

    def _save(self, tenant_id: str, creds: WebhookCredentials) -> None:
        doc = {"current": creds.current, "token": creds.token,
               "previous": [{"secret": s, "token": t, "until": u} for s, t, u in creds.previous]}
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path(tenant_id), json.dumps(doc, indent=1).encode(), 0o600)
