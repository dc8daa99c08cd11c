"""Message templates: weighted variations, spintax `{Olá|Oi}` and variables `{{first_name}}`.

A stdlib-only leaf: the daemon validates tenant files with it (an unknown variable or a bad
spintax is a check error at load) and the services render with it, so both sides agree on
what a template means. Rendering is seeded (by the message's key), so a retried message gets
the very same text.

Syntax: `{a|b|c}` picks one choice (choices may nest and may be empty: `{Oi|}`); `{{name}}`
inserts a variable; `\\{`, `\\}`, `\\|` and `\\\\` are literal characters.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Union
from zoneinfo import ZoneInfo

VARIABLES = {
    "name": "customer's full name",
    "first_name": "customer's first name",
    "product": "product title",
    "total": "order total as BRL, e.g. R$ 1.234,56",
    "pix_code": "PIX copy-and-paste code",
    "expires_at": "PIX expiry in the tenant's time zone, e.g. 01/12/2026 às 14:30",
    "order_id": "the shop's order id",
    "quantity": "quantity ordered",
}


class TemplateError(ValueError):
    """A template that cannot be used; str() says where and how to fix it."""


# A parsed template is a list of parts: str (literal), _Var, or _Spin (choices of part lists).
@dataclass(frozen=True)
class _Var:
    name: str


@dataclass(frozen=True)
class _Spin:
    choices: tuple[tuple[Part, ...], ...]


Part = Union[str, _Var, _Spin]  # noqa: UP007 (a runtime alias: | on a str forward ref fails)


@dataclass(frozen=True)
class Variation:
    text: str
    weight: float
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class TemplateSet:
    """The variations of one message (a reminder step, the thank-you); one is drawn per message."""

    variations: tuple[Variation, ...]

    def render(self, variables: dict[str, str], seed: str) -> str:
        rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
        chosen = rng.choices(self.variations, weights=[v.weight for v in self.variations])[0]
        return _render(chosen.parts, variables, rng).strip()


# Campaign templates may use any CSV column: names are checked against the recipients instead.
ANY_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def parse(text: str, variables: Collection[str] | None = VARIABLES.keys()) -> tuple[Part, ...]:
    """Parse one template string; TemplateError names the position and the problem.

    variables: the names allowed (default: VARIABLES, recovery's); None allows any name."""
    parts, pos = _parse_seq(text, 0, nested=False, known=variables)
    if pos != len(text):  # only a stray '}' or '|' at top level stops the sequence early
        raise TemplateError(f"unexpected {text[pos]!r} at character {pos + 1}: "
                            "escape it as \\" + text[pos] + " or open the choice with {")
    return parts


def _parse_seq(text: str, pos: int, *, nested: bool,
               known: Collection[str] | None) -> tuple[tuple[Part, ...], int]:
    parts: list[Part] = []
    buf: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text) and text[pos + 1] in "{}|\\":
            buf.append(text[pos + 1])
            pos += 2
        elif ch == "{":
            if buf:
                parts.append("".join(buf))
                buf = []
            part, pos = (_parse_var(text, pos, known) if text.startswith("{{", pos)
                         else _parse_choice(text, pos, known))
            parts.append(part)
        elif ch in "|}":
            if nested:
                break
            raise TemplateError(f"unexpected {ch!r} at character {pos + 1} outside a {{choice}}: "
                                f"escape it as \\{ch}")
        else:
            buf.append(ch)
            pos += 1
    if buf:
        parts.append("".join(buf))
    return tuple(parts), pos

def _parse_var(text: str, pos: int, known: Collection[str] | None) -> tuple[Part, int]:
    """`{{name}}` at pos."""
    end = text.find("}}", pos + 2)
    if end < 0:
        raise TemplateError(f"variable opened with {{{{ at character {pos + 1} "
                            "is never closed with }}")
    name = text[pos + 2:end].strip()
    if known is None and not ANY_VARIABLE.fullmatch(name):
        raise TemplateError(f"variable {{{{{name}}}}} at character {pos + 1} is not a name: "
                            "use letters, digits and _ as in {{first_name}} or {{cidade}}")
    if known is not None and name not in known:
        raise TemplateError(f"unknown variable {{{{{name}}}}} at character {pos + 1}: "
                            f"use one of {', '.join(known)}")
    return _Var(name), end + 2


def _parse_choice(text: str, pos: int, known: Collection[str] | None) -> tuple[Part, int]:
    """`{a|b|...}` at pos."""
    start = pos
    choices: list[tuple[Part, ...]] = []
    pos += 1
    while True:
        choice, pos = _parse_seq(text, pos, nested=True, known=known)
        choices.append(choice)
        if pos >= len(text):
            raise TemplateError(f"choice opened with {{ at character {start + 1} "
                                "is never closed with }")
        if text[pos] == "}":
            pos += 1
            break
        pos += 1  # '|'
    if len(choices) < 2:
        raise TemplateError(f"choice at character {start + 1} has one option: separate options "
                            "with | as in {Olá|Oi}, or write a variable as {{first_name}}")
    return _Spin(tuple(choices)), pos



def _render(parts: tuple[Part, ...], variables: dict[str, str], rng: random.Random) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, _Var):
            out.append(variables.get(part.name, ""))
        else:
            out.append(_render(rng.choice(part.choices), variables, rng))
    return "".join(out)


def parse_set(value: Any, where: str,
              variables: Collection[str] | None = VARIABLES.keys()) -> TemplateSet:
    """A tenant-file `templates` value: a string, or a list of strings and {text, weight} tables."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise TemplateError(f"{where}: must be a template string or a non-empty list of them")
    variations: list[Variation] = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        weight: Any = 1.0
        if isinstance(item, dict):
            unknown = set(item) - {"text", "weight"}
            if unknown:
                raise TemplateError(f"{here}: unknown key {sorted(unknown)[0]!r}: "
                                    "a variation has text and weight")
            text, weight = item.get("text"), item.get("weight", 1.0)
        else:
            text = item
        if not isinstance(text, str) or not text.strip():
            raise TemplateError(f"{here}: must be a non-empty template string")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise TemplateError(f"{here}.weight: must be a number greater than 0")
        try:
            parts = parse(text, variables)
        except TemplateError as exc:
            raise TemplateError(f"{here}: {exc}") from None
        variations.append(Variation(text, float(weight), parts))
    return TemplateSet(tuple(variations))


def brl(amount: Decimal) -> str:
    """R$ 1.234,56 (Brazilian real, two decimals, '.' thousands)."""
    cents = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    sign = "-" if cents < 0 else ""
    whole, _, frac = f"{abs(cents):.2f}".partition(".")
    groups = []
    while len(whole) > 3:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    groups.insert(0, whole)
    return f"{sign}R$ {'.'.join(groups)},{frac}"


def pt_br_datetime(moment: datetime, zone: str) -> str:
    """01/12/2026 às 14:30, in the tenant's time zone."""
    local = moment.astimezone(ZoneInfo(zone))
    return local.strftime("%d/%m/%Y às %H:%M")
