"""How much of the shared Redis each tenant holds: key counts and bytes, sampled by the daemon.

Redis has no per-user quota, so the figures are what makes a tenant filling the server visible
(and alertable) before `maxmemory` refuses everyone's writes. A sample SCANs each tenant's
prefix with the admin connection; MEMORY USAGE is summed over at most `max_keys` keys per
prefix and extrapolated beyond that, so one huge tenant cannot make a sample slow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis

from oraclewad.provision.dataservers import RedisParams
from oraclewad.provision.names import key_glob


@dataclass(frozen=True)
class Usage:
    keys: int
    bytes: int


def sample(params: RedisParams, prefixes: Mapping[str, str], *, max_keys: int = 10_000) -> dict[str, Usage]:
    """Blocking: {tenant: Usage} for prefixes {tenant: key prefix}; a tenant with several
    prefixes (one per service) appears once per call for each, so pass one prefix per tenant."""
    found: dict[str, Usage] = {}
    with params.client() as client:
        for tenant, prefix in prefixes.items():
            keys = measured = total = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=key_glob(prefix), count=1000):
                keys += 1
                if measured + len(batch) < max_keys:
                    batch.append(key)
                if len(batch) >= 500:
                    total += _memory(client, batch)
                    measured += len(batch)
                    batch = []
            if batch:
                total += _memory(client, batch)
                measured += len(batch)
            if measured and keys > measured:
                total = total * keys // measured
            found[tenant] = Usage(keys, total)
    return found


def _memory(client: redis.Redis, keys: list[bytes]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(int(v or 0) for v in pipe.execute())
