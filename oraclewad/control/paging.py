"""Paging of list answers: each stays far under gRPC's 4 MiB message limit however many tenants
there are (issue 7, item 3).

A list request carries `page_size` (0: as many as fit) and `page_token` (empty: from the start);
the answer holds at most page_size items and at most PAGE_BYTES of them, and `next_page_token`
when more follow. The token names the last item sent and its position: the next page goes on
after that item, or at the same position when it is gone (a tenant removed in between).
oraclectl's typed client methods read every page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from oraclewad.errors import InvalidArgument

PAGE_BYTES = 1024 * 1024        # a quarter of the limit: room for the envelope, never near it
MAX_PAGE_SIZE = 100_000


class Message(Protocol):
    def ByteSize(self) -> int: ...


M = TypeVar("M", bound=Message)


def page(items: Sequence[M], keys: Sequence[str], page_size: int, token: str) -> tuple[list[M], str]:
    """One page of `items` (in their order; `keys` names each one) and the token of the next."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"must be between 0 (as many as fit) and {MAX_PAGE_SIZE}", field="page_size")
    start = _start(keys, token)
    limit = page_size or len(items)
    out: list[M] = []
    size = 0
    for i in range(start, len(items)):
        n = items[i].ByteSize() + 8    # the field's tag and length prefix
        if out and (len(out) >= limit or size + n > PAGE_BYTES):
            return out, f"{i}:{keys[i - 1]}"
        out.append(items[i])
        size += n
    return out, ""


def _start(keys: Sequence[str], token: str) -> int:
    if not token:
        return 0
    index, sep, last = token.partition(":")
    if not sep or not index.isdigit():
        raise InvalidArgument("is not a token this daemon handed out; start again without one",
                              field="page_token")
    position = int(index)
    if 0 < position <= len(keys) and keys[position - 1] == last:
        return position
    try:
        return list(keys).index(last) + 1
    except ValueError:
        return min(position, len(keys))
