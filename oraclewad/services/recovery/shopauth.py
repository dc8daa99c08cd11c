"""Who may post order webhooks: the tenant's shop, proven by one of three schemes.

1. The original platform's: `X-Webhook-Signature` = hex HMAC-SHA256 of `<X-Webhook-Timestamp>.<raw body>`,
   keyed with the webhook secret as shown by `oraclectl tenant secrets` (its UTF-8 bytes, `whsec_`
   prefix included), timestamp in milliseconds within 300 s of our clock.
2. Standard Webhooks (`webhook-id`, `webhook-timestamp` in seconds, `webhook-signature: v1,<base64> ...`),
   signed with the `standardwebhooks` package: the base64 part of the `whsec_` secret is the key.
3. A static `X-Auth-Webhook: <token>` header, only when the tenant sets `static_token = true`.

During a rotation every secret not past its `until` is tried, so the old and the new both work.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

TOLERANCE_S = 300.0


class Unauthorized(Exception):
    """401; str() says which header is missing or wrong (never what the secret is)."""


@dataclass(frozen=True)
class Secret:
    value: str
    until: float | None  # unix time after which a rotated-out secret stops working


@dataclass(frozen=True)
class Verified:
    scheme: str              # "hmac" | "standard" | "static"
    delivery_id: str | None  # de-duplication key when the scheme has one


class ShopAuth:
    def __init__(self, secrets: Sequence[Secret], tokens: Sequence[Secret], *, static_enabled: bool,
                 clock: Callable[[], float]) -> None:
        self.secrets = [s for s in secrets if s.value]
        self.tokens = [t for t in tokens if t.value]
        self.static_enabled = static_enabled
        self.clock = clock
        self._standard = {s.value: _standard(s.value) for s in self.secrets}

    def _live(self, items: Sequence[Secret] | None = None) -> list[Secret]:
        now = self.clock()
        return [s for s in (self.secrets if items is None else items) if s.until is None or s.until > now]

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        if not self.secrets:
            raise Unauthorized("this tenant has no webhook secret yet: run `oraclectl tenant secrets`")
        if "webhook-signature" in headers:
            return self._verify_standard(headers, body)
        if "x-webhook-signature" in headers:
            return self._verify_hmac(headers, body)
        if "x-auth-webhook" in headers:
            if not (self.static_enabled and self.tokens):
                raise Unauthorized("X-Auth-Webhook is not enabled for this tenant: sign the request "
                                   "(X-Webhook-Signature or webhook-signature)")
            given = headers["x-auth-webhook"].encode()
            if not any(hmac.compare_digest(given, t.value.encode()) for t in self._live(self.tokens)):
                raise Unauthorized("X-Auth-Webhook does not match the tenant's token")
            return Verified("static", headers.get("x-webhook-id") or None)
        raise Unauthorized("no signature: send X-Webhook-Signature + X-Webhook-Timestamp, or the "
                           "Standard Webhooks headers webhook-id/webhook-timestamp/webhook-signature")

    def _fresh(self, headers: Mapping[str, str], name: str, per_second: int) -> str:
        """The timestamp header's digits, once it is within TOLERANCE_S of our clock."""
        stamp = headers.get(name.lower(), "")
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > (16 if per_second > 1 else 12):
            unit = "milliseconds" if per_second > 1 else "seconds"
            raise Unauthorized(f"{name} must be the send time in {unit} since 1970")
        if abs(int(stamp) / per_second - self.clock()) > TOLERANCE_S:
            raise Unauthorized(f"{name} is more than {TOLERANCE_S:g} s from now: "
                               "check the shop's clock, or this is a replay")
        return stamp

    def _verify_hmac(self, headers: Mapping[str, str], body: bytes) -> Verified:
        stamp = self._fresh(headers, "X-Webhook-Timestamp", 1000)
        given = headers["x-webhook-signature"].strip().lower().removeprefix("sha256=").encode()
        signed = stamp.encode() + b"." + body
        for secret in self._live():
            # hmac.digest: OpenSSL's one-shot HMAC, without hmac.new's Python object (half the time).
            expected = hmac.digest(secret.value.encode(), signed, "sha256").hex().encode()
            if hmac.compare_digest(expected, given):
                return Verified("hmac", headers.get("x-webhook-id") or None)
        raise Unauthorized("X-Webhook-Signature does not match (HMAC-SHA256 of '<timestamp>.<body>' "
                           "with the tenant's webhook secret)")

    def _verify_standard(self, headers: Mapping[str, str], body: bytes) -> Verified:
        # Our (injectable) clock checks the time; the package signs, as every Standard Webhooks sender does.
        stamp = self._fresh(headers, "webhook-timestamp", 1)
        msg_id = headers.get("webhook-id", "")
        if not msg_id:
            raise Unauthorized("webhook-id is missing")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise Unauthorized("webhook-signature does not match: the body is not UTF-8") from None
        given = [sig.encode() for version, _, sig in
                 (item.partition(",") for item in headers["webhook-signature"].split())
                 if version == "v1"]
        moment = datetime.fromtimestamp(int(stamp), tz=UTC)
        for secret in self._live():
            hook = self._standard.get(secret.value)
            if hook is None:
                continue
            expected = hook.sign(msg_id, moment, text).split(",", 1)[1].encode()
            if any(hmac.compare_digest(expected, sig) for sig in given):
                return Verified("standard", msg_id)
        raise Unauthorized("webhook-signature has no v1 signature matching the tenant's secret")


def _standard(value: str) -> Webhook | None:
    try:
        return Webhook(value) if value.startswith("whsec_") else Webhook(value.encode())
    except Exception:  # not base64 after whsec_: the Standard Webhooks scheme cannot use it
        return None


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64>` as a Standard Webhooks sender computes it (for the curl example and tests)."""
    hook = _standard(secret)
    assert hook is not None
    return hook.sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())


def hmac_signature(secret: str, timestamp_ms: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp_ms}.".encode() + body, hashlib.sha256).hexdigest()

