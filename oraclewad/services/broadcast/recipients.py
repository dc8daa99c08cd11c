"""Recipients from a CSV or a JSON list: parsed, normalised and sorted into accepted or invalid.

CSV as spreadsheets export it: `;` or `,` (or tab) as the separator, a UTF-8 BOM, quoted fields
(with separators or line breaks inside), a header row whose phone and name columns may be called
telefone/phone/whatsapp/celular/numero and nome/name in any case, with or without accents. Every
other column becomes a template variable (`Cidade` -> `{{cidade}}`). Phones are normalised with
`phonenumbers` (services/phones.py). Duplicates and suppressed numbers are decided here (within
the file) and by the store (against the campaign's earlier imports and the suppression list).
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from oraclewad.services.phones import normalise

PHONE_ALIASES = ("telefone", "phone", "whatsapp", "celular", "numero")
NAME_ALIASES = ("nome", "name")
MAX_COLUMNS = 50
MAX_FIELD = 1000  # characters of one value: a template variable, not a document
_NOT_WORD = re.compile(r"[^a-z0-9]+")


class ImportError_(ValueError):
    """The whole input cannot be read (no phone column, bad JSON shape); str() says the fix."""


@dataclass(frozen=True)
class Row:
    line: int
    phone: str
    name: str
    vars: dict[str, str]


@dataclass
class Parsed:
    rows: list[Row] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)     # {line, value, reason}
    duplicate: list[dict[str, Any]] = field(default_factory=list)   # {line, phone, first_line?}
    columns: list[str] = field(default_factory=list)                # variable names besides name/phone


def column_key(header: str) -> str:
    """'Número ' -> 'numero', 'Data de Nascimento' -> 'data_de_nascimento' (case, accents ignored)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", header) if not unicodedata.combining(c))
    return _NOT_WORD.sub("_", plain.strip().lower()).strip("_")


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (";", ",", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def parse_csv(text: str, first_line: int = 1) -> Parsed:
    """first_line: the file line `text` starts at (oraclectl sends a big file in parts, each with
    the header, so the lines it answers are the file's)."""
    text = text.lstrip("\ufeff")
    header_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(header_line))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportError_("the CSV is empty: it needs a header row such as telefone;nome") from None
    keys = [column_key(h) for h in header]
    return _sort(keys, _csv_records(reader, first_line), where="line")


def _csv_records(reader: Any, first_line: int) -> Iterator[tuple[int, list[str]]]:
    # reader.line_num counts physical lines read so far: a record starts one after the last one.
    last = reader.line_num
    for record in reader:
        start = last + 1
        last = reader.line_num
        yield first_line + start - 1, record


def parse_json(items: Any) -> Parsed:
    """[{"telefone": "...", "nome": "...", "cidade": "..."}, ...]; `line` is the item's number (1..)."""
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ImportError_("recipients: must be a list of objects such as "
                           '[{"telefone": "11987654321", "nome": "Ana"}]')
    def canonical(key: Any) -> str:
        # Objects need not agree on the alias: {"phone": ...} and {"telefone": ...} are one column.
        k = column_key(str(key))
        return "phone" if k in PHONE_ALIASES else "name" if k in NAME_ALIASES else k

    keys: list[str] = []
    for item in items:
        for k in item:
            if canonical(k) not in keys:
                keys.append(canonical(k))

    def records() -> Iterator[tuple[int, list[str]]]:
        for n, item in enumerate(items, 1):
            by_key = {canonical(k): v for k, v in item.items()}
            yield n, [_text(by_key.get(k)) for k in keys]

    return _sort(keys, records(), where="item")


def _text(value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sort(keys: list[str], records: Iterable[tuple[int, list[str]]], *, where: str) -> Parsed:
    phone_at = next((i for i, k in enumerate(keys) if k in PHONE_ALIASES), None)
    if phone_at is None:
        raise ImportError_(f"no phone column: name one of {', '.join(PHONE_ALIASES)} in the header "
                           f"(found {', '.join(k or '(empty)' for k in keys) or 'nothing'})")
    name_at = next((i for i, k in enumerate(keys) if k in NAME_ALIASES), None)
    if len(keys) > MAX_COLUMNS:
        raise ImportError_(f"{len(keys)} columns: at most {MAX_COLUMNS}")
    extra = [(i, k) for i, k in enumerate(keys) if i not in (phone_at, name_at) and k]
    out = Parsed(columns=[k for _, k in extra])
    seen: dict[str, int] = {}
    for line, record in records:
        raw = record[phone_at].strip() if phone_at < len(record) else ""
        if not raw:
            if not any(v.strip() for v in record):
                continue  # a blank line (spreadsheets end files with several)
            out.invalid.append({where: line, "value": "", "reason": "no phone number"})
            continue
        phone = normalise(raw)
        if phone is None:
            out.invalid.append({where: line, "value": raw[:40],
                                "reason": "not a valid phone number (DDD and number, e.g. 11987654321)"})
            continue
        if phone in seen:
            out.duplicate.append({where: line, "phone": phone, "first_" + where: seen[phone]})
            continue
        name = record[name_at].strip()[:MAX_FIELD] if name_at is not None and name_at < len(record) else ""
        values = {k: (record[i].strip()[:MAX_FIELD] if i < len(record) else "") for i, k in extra}
        seen[phone] = line
        out.rows.append(Row(line, phone, name, values))
    return out


def variables(row_name: str, phone: str, values: dict[str, str]) -> dict[str, str]:
    """What a template sees for one recipient: its columns, name, first name and phone."""
    first = row_name.split()[0] if row_name.split() else ""
    return {**values, "name": row_name, "first_name": first, "phone": phone}
