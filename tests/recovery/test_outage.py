"""PostgreSQL stops under the recovery child: the shop gets 503 + Retry-After (never 500), and once
the database is back every acknowledged event is there exactly once. Uses a private embedded
PostgreSQL (the machine's shared server is never stopped)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import trio

from oraclewad.provision.embedded import EmbeddedPostgres
from tests.recovery.support import order, post_order, rows
from tests.services.sending import make_database
from tests.support.servers import private_postgres


@pytest.fixture
def private_pg() -> Iterator[EmbeddedPostgres]:
    with private_postgres() as server:
        yield server


async def test_database_down_answers_503_and_loses_nothing_acknowledged(start_recovery, private_pg):
    dsn = make_database(private_pg.admin_dsn)
    child = await start_recovery(dsn)
    acked: list[str] = []
    refused: list[dict] = []
    async with httpx.AsyncClient(base_url=child.url, timeout=30) as client:
        for i in range(5):
            doc = order(order_id=f"before-{i}")
            assert (await post_order(client, doc)).status_code == 202
            acked.append(doc["data"]["id"])
        await trio.to_thread.run_sync(private_pg.stop)
        for i in range(3):
            doc = order(order_id=f"during-{i}")
            response = await post_order(client, doc)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            refused.append(doc)
        await trio.to_thread.run_sync(private_pg.start)
        # The shop retries what got 503 (a new signature each time, as a real shop would).
        for doc in refused:
            for _ in range(20):
                response = await post_order(client, doc)
                if response.status_code == 202:
                    break
                await trio.sleep(0.25)
            assert response.status_code == 202, response.text
            acked.append(doc["data"]["id"])
        # And re-sends one it had an answer for: a duplicate, nothing more.
        assert (await post_order(client, order(order_id="before-0"))).status_code == 200
    assert sorted(r[0] for r in rows(dsn, "SELECT order_id FROM webhook_events")) == sorted(acked)
    assert rows(dsn, "SELECT count(*), count(DISTINCT order_id) FROM outbound_messages") == [(8, 8)]
    assert not [line for line in child.process.lines if '"status": 500' in line]
