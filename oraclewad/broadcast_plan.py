"""The broadcast settings of a tenant (`[broadcast]` in its tenant file, beside `port`, `instances`
and `policy`). A stdlib-only leaf, like recovery_plan: the daemon validates the tenant file with
`parse()` and passes the plan to the child in its config, where the service parses it again.

    [broadcast]
    send_timeout = 30.0    # seconds Evolution may take past the typing gap before a send counts
                           # as `uncertain` (never resent); 1-600
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, float] = {"send_timeout": 30.0}
KEYS = frozenset(DEFAULTS)
SEND_TIMEOUT_RANGE = (1.0, 600.0)

Problems = list[tuple[str, str]]  # (key, message)


def parse(table: dict[str, Any], *, prefix: str = "broadcast") -> tuple[dict[str, Any], Problems]:
    """Validate the broadcast keys of a `[broadcast]` table (others are left to the schema check,
    which has the did-you-mean); returns (plan with every default filled in, problems)."""
    problems: Problems = []
    low, high = SEND_TIMEOUT_RANGE
    timeout = table.get("send_timeout", DEFAULTS["send_timeout"])
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not low <= timeout <= high:
        problems.append((f"{prefix}.send_timeout" if prefix else "send_timeout",
                         f"must be a number of seconds from {low:g} to {high:g}, got {timeout!r}: "
                         f"e.g. send_timeout = {DEFAULTS['send_timeout']:g}"))
        timeout = DEFAULTS["send_timeout"]
    return {"send_timeout": float(timeout)}, problems
