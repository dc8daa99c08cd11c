"""What a child costs, from /proc: RSS, PSS and CPU seconds (read off the trio thread)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path


def proc_figures(pid: int) -> Mapping[str, float]:
    """RSS, PSS and CPU seconds of a child (it may be gone by the time we look: then fewer)."""
    figures: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        figures["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / ticks
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        figures["rss_bytes"] = float(rss_pages * os.sysconf("SC_PAGE_SIZE"))
        # PSS shares each shared page among its users: the honest "what this child costs".
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                figures["pss_bytes"] = float(int(line.split()[1]) * 1024)
                break
    return figures
