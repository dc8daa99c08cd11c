"""The shop's order webhook body (the original platform's shape), validated field by field.

    {"event": "order.expired" | "order.paid", "timestamp"?: ...,
     "data": {"id", "product": {"title"}, "user": {"name", "phone", "email"?}, "pixCode"?,
              "quantity"?, "total", "expirationAt"?, "createdAt"?}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

EVENTS = {"order.expired": "order_expired", "order.paid": "order_paid"}
_MAX_TOTAL = Decimal("999999999999.99")  # numeric(14, 2)
_MAX_TEXT = 4096


class InvalidPayload(ValueError):
    """422; `field` is the JSON path of the first bad field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class OrderEvent:
    kind: str                     # order_expired | order_paid
    order_id: str
    customer_name: str
    phone_raw: str
    product: str
    total: Decimal
    pix_code: str | None
    quantity: int | None
    expires_at: datetime | None
    payload: str                  # the body as JSON text, for the verbatim copy


def parse(body: bytes, time_zone: str) -> OrderEvent:
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError):
        raise InvalidPayload("body", "must be UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise InvalidPayload("body", f"not valid JSON (line {exc.lineno} column {exc.colno}: "
                                     f"{exc.msg})") from None
    except ValueError:  # an integer of more than 4,300 digits (int's conversion limit)
        raise InvalidPayload("body", "holds a number of more than 4,300 digits; send it as a string"
                             ) from None
    text = _plain_text(body)
    if text is None:
        try:
            _check_strings(doc, "body", 0)
            # PostgreSQL's jsonb holds neither NUL nor lone surrogates; refuse them here, not with a 500.
            text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
            text.encode()
        except RecursionError:
            raise InvalidPayload("body", "is nested too deeply") from None
        except UnicodeEncodeError:
            raise InvalidPayload("body", "holds an unpaired surrogate (\\ud800-\\udfff) in a string"
                                 ) from None
    if not isinstance(doc, dict):
        raise InvalidPayload("body", "must be a JSON object")
    event = doc.get("event")
    if not isinstance(event, str) or event not in EVENTS:
        raise InvalidPayload("event", f'must be one of {", ".join(EVENTS)}, got {_show(event)}')
    data = _obj(doc, "data", "data")
    order_id = data.get("id")
    if isinstance(order_id, int) and not isinstance(order_id, bool):
        order_id = str(order_id)
    order_id = _text(order_id, "data.id", limit=200)
    product = _text(_obj(data, "product", "data.product").get("title"), "data.product.title")
    user = _obj(data, "user", "data.user")
    name = _text(user.get("name"), "data.user.name")
    phone = user.get("phone")
    if isinstance(phone, int) and not isinstance(phone, bool):
        phone = str(phone)
    phone = _text(phone, "data.user.phone", limit=40)
    if "email" in user and user["email"] is not None and not isinstance(user["email"], str):
        raise InvalidPayload("data.user.email", "must be a string")
    total = _money(data.get("total"))
    pix = data.get("pixCode")
    if pix is not None:
        pix = _text(pix, "data.pixCode")
    quantity = data.get("quantity")
    if quantity is not None and (isinstance(quantity, bool) or not isinstance(quantity, int)
                                 or not 0 < quantity < 1_000_000):
        raise InvalidPayload("data.quantity", "must be a whole number between 1 and 999999")
    expires = _moment(data.get("expirationAt"), "data.expirationAt", time_zone)
    _moment(data.get("createdAt"), "data.createdAt", time_zone)
    return OrderEvent(EVENTS[event], order_id, name, phone, product, total, pix, quantity, expires, text)


def _plain_text(body: bytes) -> str | None:
    """The body itself as the stored JSON text when it cannot hold what _check_strings refuses,
    else None (walk the document and store it re-encoded). In UTF-8 JSON a NUL or a lone
    surrogate can only be written as a \\u escape (raw control characters are invalid JSON and
    raw surrogates invalid UTF-8), and a document with at most 32 brackets is at most 32 deep.
    A shop's order has no escape and a handful of brackets: the walk and the second encoding
    were a third of the parsing."""
    if b"\\u" in body or body.count(b"{") + body.count(b"[") > 32:
        return None
    try:
        text = body.decode()
    except UnicodeDecodeError:    # UTF-16/32 JSON, which json.loads also reads
        return None
    return None if text.startswith("\ufeff") else text


def _no_constant(name: str) -> Any:
    raise InvalidPayload("body", f"{name} is not a JSON number")


def _check_strings(value: Any, where: str, depth: int) -> None:
    if depth > 32:
        raise InvalidPayload(where, "is nested too deeply (more than 32 levels)")
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidPayload(where, "must not contain NUL characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in k:
                raise InvalidPayload(where, "keys must not contain NUL characters")
            _check_strings(v, f"{where}.{k}"[:200], depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(v, f"{where}[{i}]"[:200], depth + 1)


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)[:60]


def _obj(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise InvalidPayload(where, f"must be an object, got {_show(value)}")
    return value


def _text(value: Any, where: str, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidPayload(where, f"is required (a non-empty string), got {_show(value)}")
    if len(value) > limit:
        raise InvalidPayload(where, f"is longer than {limit} characters")
    return value.strip()


def _money(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidPayload("data.total", f"must be a number such as 1234.56, got {_show(value)}")
    try:
        text = str(value).strip().replace(",", ".") if isinstance(value, str) else str(value)
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidPayload("data.total", f"must be a number such as 1234.56, got {_show(value)}") from None
    if not amount.is_finite() or amount < 0 or amount > _MAX_TOTAL:
        raise InvalidPayload("data.total", "must be between 0 and 999999999999.99")
    return amount.quantize(Decimal("0.01"))


def _moment(value: Any, where: str, time_zone: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Epoch milliseconds (JavaScript shops) or seconds.
        seconds = value / 1000 if value > 1e11 else value
        try:
            moment = datetime.fromtimestamp(seconds, tz=ZoneInfo("UTC"))
        except (OverflowError, OSError, ValueError):
            raise InvalidPayload(where, "is not a valid time") from None
        if not 2000 <= moment.year <= 2100:
            raise InvalidPayload(where, "must be a time between the years 2000 and 2100")
        return moment
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidPayload(where, 'must be an ISO 8601 time such as "2026-12-01T14:30:00-03:00"')
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidPayload(where, 'must be an ISO 8601 time such as "2026-12-01T14:30:00-03:00"') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(time_zone))  # a shop without offsets means local time
    if not 2000 <= moment.year <= 2100:
        raise InvalidPayload(where, "must be a time between the years 2000 and 2100")
    return moment
