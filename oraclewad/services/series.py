"""Prometheus children kept per label values, for metrics updated on a hot path.

`metric.labels(...)` takes a lock and builds a tuple on every call; a request path that updates
a few series per request keeps the children instead. Only for bounded label values (routes,
methods, statuses, event kinds): the cache never shrinks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def kept_children(metric: Any) -> Callable[..., Any]:
    """children(*label_values) -> the metric's child for them, made once."""
    cache: dict[tuple[str, ...], Any] = {}

    def children(*values: str) -> Any:
        child = cache.get(values)
        if child is None:
            child = cache[values] = metric.labels(*values)
        return child

    return children
