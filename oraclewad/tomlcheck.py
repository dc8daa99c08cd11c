"""Typed reads from parsed TOML tables that collect every problem instead of stopping at the first."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from oraclewad.errors import Problem

# A declared schema: key -> KEY (a value), a nested Schema (a table) or NAMES (a table of
# operator-chosen names). See oraclewad/tenants/schema.py.
KEY = "value"
NAMES = "names"
Schema = Mapping[str, "Schema | str"]

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


class TableReader:
    """Reads keys of one TOML table; every bad or unknown key becomes a Problem naming key and fix."""

    def __init__(self, table: Any, source: str, prefix: str, problems: list[Problem]) -> None:
        self.source = source
        self.prefix = prefix
        self.problems = problems
        if not isinstance(table, dict):
            self.fail("", f"must be a table ([{prefix}]), not {type(table).__name__}")
            table = {}
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> None:
        self.problems.append(Problem(self.source, self.key(name) if name else self.prefix, message))

    def get(self, name: str, kind: type, default: Any = None, *,
            check: Callable[[Any], str | None] | None = None) -> Any:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.fail(name, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}")
            return default
        if check is not None:
            error = check(value)
            if error:
                self.fail(name, error)
                return default
        return value

    def sub(self, name: str) -> TableReader:
        self.seen.add(name)
        return TableReader(self.table.get(name, {}), self.source, self.key(name), self.problems)

    def finish(self) -> None:
        for name in self.table:
            if name not in self.seen:
                self.fail(name, unknown_key(name, self.seen))


def unknown_key(name: str, known: Iterable[str]) -> str:
    """The message for a key nobody reads, with the closest known key when one is near."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f": did you mean {close[0]!r}?" if close else ": remove it or check its spelling"
    return f"unknown key{hint}"


def check_keys(table: Mapping[str, object], schema: Schema, source: str,
               problems: list[Problem], prefix: str = "") -> None:
    """Report every key of a document (at any depth) that its schema does not declare."""
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        spec = schema.get(name)
        if spec is None:
            problems.append(Problem(source, key, unknown_key(name, schema)))
        elif isinstance(spec, Mapping) and isinstance(value, dict):
            check_keys(value, spec, source, problems, key)
        # A table given as a value is reported by the TableReader that reads it.


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def port_number(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port between 1 and 65535"


def load_toml(path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    """Parse a TOML file, turning unreadable or malformed files into a Problem."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problems.append(Problem(str(path), "", "file not found: create it or pass --config"))
    except OSError as e:
        problems.append(Problem(str(path), "", f"cannot read: {e.strerror}"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        problems.append(Problem(str(path), "", f"not valid TOML: {e}"))
    return None
