"""Children's own metrics: fetched over their admin sockets, relabelled tenant/service, merged by family.

The fleet scrapes (for /metrics and `oraclectl metrics`/`top` alike); metrics.py merges and
exposes. Every child is read concurrently and bounded by a timeout, so a hung child costs at
most that and is counted (`timeouts`), never waited for.

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

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import trio
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import parse_labels
from prometheus_client.samples import Sample

from oraclewad.health import read_capped

log = logging.getLogger("oraclewad.metrics")

# Labels the daemon sets on every child sample; a child's own value for them is replaced.
IDENTITY = ("tenant", "service")
# Names the daemon itself exports: a child family under one of these prefixes is dropped
# rather than exported twice.
RESERVED_PREFIXES = ("oraclewa_service_", "oraclewa_daemon_", "oraclewa_child_scrape_", "oraclewa_tenants",
                     "oraclewa_control_", "oraclewa_config_", "oraclewa_provisioning_")
MAX_CHILD_BYTES = 4 * 1024 * 1024   # a child answering more than this is cut off (and reported)
MAX_CACHE = 10_000          # parsed keys kept per child: a child with churning labels cannot grow us
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped", "info", "stateset", "gaugehistogram"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")     # legacy names only (see metrics._encoder)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}


Key = tuple[str, str]               # (tenant, service)


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
        if not all(_LABEL.fullmatch(k) for k in labels):
            raise ParseError(f"bad label name in {key[:200]!r}")
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


@dataclass
class ChildScrape:
    key: Key
    seconds: float
    outcome: str                    # ok | timeout | error
    text: str = ""                  # the child's answer, parsed into `families` off the event loop
    families: list[Family] = field(default_factory=list)


class ChildScraper:
    """Reads the children's /metrics over their admin sockets; remembers per child what
    repeated scrapes need (a keep-alive client, the label-set cache, the timeout count)."""

    def __init__(self, socket_path: Callable[[str, str], str], timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._clients: dict[Key, tuple[str, httpx.AsyncClient]] = {}
        self._parsers: dict[Key, ChildParser] = {}
        self.timeouts: dict[Key, int] = {}
        self.errors: dict[Key, int] = {}

    def _client(self, key: Key) -> httpx.AsyncClient:
        path = self.socket_path(*key)
        cached = self._clients.get(key)
        if cached is not None and cached[0] == path:
            return cached[1]
        # verify=False: plain HTTP over a unix socket, and loading the CA bundle costs ~60 ms per
        # client (12 s of blocked event loop for 200 children on the first scrape).
        transport = httpx.AsyncHTTPTransport(uds=path, retries=0, verify=False)
        client = httpx.AsyncClient(transport=transport, timeout=self.timeout, verify=False, trust_env=False)
        self._clients[key] = (path, client)
        return client

    async def scrape(self, keys: Sequence[Key]) -> dict[Key, ChildScrape]:
        """Every child at once; each answer (or its timeout) within `timeout` seconds."""
        results: list[ChildScrape] = []
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(self._one, key, results)
        return {r.key: r for r in results}

    async def _one(self, key: Key, results: list[ChildScrape]) -> None:
        start = time.perf_counter()
        outcome, text = "timeout", ""
        with trio.move_on_after(self.timeout):
            try:
                text, outcome = await self._read(key), "ok"
            except (httpx.HTTPError, OSError, ValueError) as e:
                outcome = "error"
                log.debug("metrics: scraping %s/%s failed: %s", *key, e)
        if outcome == "timeout":
            self.timeouts[key] = self.timeouts.get(key, 0) + 1
            # The connection may still carry the late answer: start afresh next time.
            await self._drop(key)
        elif outcome == "error":
            self.errors[key] = self.errors.get(key, 0) + 1
        results.append(ChildScrape(key, time.perf_counter() - start, outcome, text))

    async def _read(self, key: Key) -> str:
        # Streamed and capped: a child cannot make the daemon hold more than MAX_CHILD_BYTES.
        async with self._client(key).stream("GET", "http://child/metrics") as response:
            if response.status_code != 200:
                raise ValueError(f"answered HTTP {response.status_code}")
            body = await read_capped(response, MAX_CHILD_BYTES)
        return body.decode("utf-8", "replace")

    def parse(self, results: Iterable[ChildScrape]) -> None:
        """Turn each answer into families (call it in a worker thread: it is the costly part)."""
        for result in results:
            text, result.text = result.text, ""
            if result.outcome != "ok":
                continue
            parser = self._parsers.get(result.key)
            if parser is None:
                parser = self._parsers[result.key] = ChildParser(*result.key)
            try:
                result.families = parser.parse(text)
            except ParseError as e:
                result.outcome = "error"
                self.errors[result.key] = self.errors.get(result.key, 0) + 1
                log.warning("metrics: %s/%s serves unparsable metrics: %s", *result.key, e)

    async def _drop(self, key: Key) -> None:
        cached = self._clients.pop(key, None)
        if cached is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await cached[1].aclose()

    async def forget_others(self, keep: Iterable[Key]) -> None:
        """Close the clients of services that are gone (removed tenants)."""
        keep = set(keep)
        for key in [k for k in self._clients if k not in keep]:
            await self._drop(key)
        for table in (self._parsers, self.timeouts, self.errors):
            for key in [k for k in table if k not in keep]:
                del table[key]

    async def aclose(self) -> None:
        await self.forget_others(())


def key_figures(families: Sequence[Family]) -> dict[str, float]:
    """The few service figures `oraclectl metrics` and `top` show, from a child's families."""
    figures: dict[str, float] = {}
    for fam in families:
        if fam.name == "oraclewa_outbox_depth":
            figures["outbox_depth"] = sum(s.value for s in fam.samples)
        elif fam.name == "oraclewa_outbox_oldest_age_seconds":
            figures["outbox_oldest_s"] = max((s.value for s in fam.samples), default=0.0)
        elif fam.name == "oraclewa_messages_uncertain":
            figures["uncertain"] = sum(s.value for s in fam.samples)
        elif fam.name == "oraclewa_messages_total":
            figures["messages_sent"] = sum(s.value for s in fam.samples
                                           if s.name == fam.name and s.labels.get("status") == "sent")
        elif fam.name == "oraclewa_http_requests_total":
            figures["http_requests"] = sum(s.value for s in fam.samples if s.name == fam.name)
    return figures
