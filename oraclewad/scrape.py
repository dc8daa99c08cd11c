"""Children's own metrics: fetched over their admin sockets, relabelled tenant/service, merged by family.

Each child serves its registry in the Prometheus text format (prometheus_client's output). The
daemon re-exposes every family once, with the samples of all children under it, so the result
is ordinary prometheus_client `Metric`s that the library writes as text or OpenMetrics.

Parsing is the cost that grows with the fleet (200 children, ~60 lines each), and
prometheus_client's own parser takes about a millisecond per child. Between two scrapes a
child's lines keep their names and labels and only the values change, so each child keeps a
cache from "name{labels}" to the parsed sample name and label dict; a scrape then parses only
the numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import parse_labels
from prometheus_client.samples import Sample

# Labels the daemon sets on every child sample; a child's own value for them is replaced.
IDENTITY = ("tenant", "service")
# Names the daemon itself exports: a child family under one of these prefixes is dropped
# rather than exported twice.
RESERVED_PREFIXES = ("oraclewa_service_", "oraclewa_daemon_", "oraclewa_child_scrape_", "oraclewa_tenants",
                     "oraclewa_control_", "oraclewa_config_", "oraclewa_provisioning_")
MAX_CACHE = 10_000          # parsed keys kept per child: a child with churning labels cannot grow us
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped", "info", "stateset", "gaugehistogram"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}


class ParseError(ValueError):
    pass


@dataclass
class Family:
    name: str               # as in the TYPE line (a counter keeps its _total here)
    type: str
    help: str = ""
    samples: list[Sample] = field(default_factory=list)


@dataclass
class ChildParser:
    """Parses one child's exposition, remembering the label sets it has seen."""

    tenant: str
    service: str
    _keys: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def parse(self, text: str) -> list[Family]:
        families: dict[str, Family] = {}
        current: Family | None = None
        helps: dict[str, str] = {}
        keys = self._keys
        for line in text.split("\n"):
            if not line:
                continue
            if line[0] == "#":
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] == "HELP":
                    helps[parts[2]] = _unescape_help(parts[3]) if len(parts) > 3 else ""
                elif len(parts) == 4 and parts[1] == "TYPE":
                    name, typ = parts[2], parts[3].strip()
                    if typ not in _TYPES or not _NAME.fullmatch(name):
                        raise ParseError(f"bad TYPE line: {line[:200]!r}")
                    current = families.get(name)
                    if current is None:
                        current = families[name] = Family(name, typ)
                continue
            brace = line.rfind("}")
            if brace >= 0:
                key, rest = line[:brace + 1], line[brace + 1:]
            else:
                key, _, rest = line.partition(" ")
            parsed = keys.get(key)
            if parsed is None:
                parsed = self._parse_key(key)
                if len(keys) < MAX_CACHE:
                    keys[key] = parsed
            sample_name, labels = parsed
            value = rest.split()
            if not value:
                raise ParseError(f"sample without a value: {line[:200]!r}")
            family = current if current is not None and _belongs(sample_name, current) else None
            if family is None:
                family = families.get(sample_name)
                if family is None:
                    family = families[sample_name] = Family(sample_name, "untyped")
            family.samples.append(Sample(sample_name, labels, float(value[0])))
        for name, family in families.items():
            family.help = helps.get(name, "")
        return list(families.values())

    def _parse_key(self, key: str) -> tuple[str, dict[str, str]]:
        brace = key.find("{")
        if brace < 0:
            name, labels = key.strip(), {}
        else:
            name = key[:brace].strip()
            try:
                labels = parse_labels(key[brace + 1:-1])
            except ValueError as e:
                raise ParseError(f"bad labels in {key[:200]!r}") from e
        if not _NAME.fullmatch(name):
            raise ParseError(f"bad metric name {name[:100]!r}")
        labels = {k: v for k, v in labels.items() if k not in IDENTITY}
        labels["tenant"], labels["service"] = self.tenant, self.service
        return name, labels


def _belongs(sample: str, family: Family) -> bool:
    if sample == family.name:
        return True
    base = family.name[:-6] if family.type == "counter" and family.name.endswith("_total") else family.name
    return any(sample == base + s for s in _SUFFIXES.get(family.type, ()))


def _unescape_help(text: str) -> str:
    if "\\" not in text:
        return text
    return text.replace("\\\\", "\x00").replace("\\n", "\n").replace("\x00", "\\")


def reserved(name: str) -> bool:
    return name.startswith(RESERVED_PREFIXES)


def merge(per_child: Iterable[list[Family]]) -> Iterator[Metric]:
    """One Metric per family name across children; a family whose type disagrees with the
    first child's that exported it (two releases at once) is left out for that child."""
    merged: dict[str, Metric] = {}
    for families in per_child:
        for fam in families:
            if reserved(fam.name):
                continue
            metric = merged.get(fam.name)
            if metric is None:
                typ = "unknown" if fam.type == "untyped" else fam.type
                # prometheus_client names a counter family without its _total.
                name = fam.name[:-6] if typ == "counter" and fam.name.endswith("_total") else fam.name
                metric = merged[fam.name] = Metric(name, fam.help, typ)
            elif metric.type != ("unknown" if fam.type == "untyped" else fam.type):
                continue
            metric.samples.extend(fam.samples)
    return iter(merged.values())
