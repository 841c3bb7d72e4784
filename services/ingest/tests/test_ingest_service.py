"""GroupedWriter: concurrent requests share one store statement, and each still gets its own answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from ingest import events
from ingest.schemas import PurchaseIn
from ingest.service import GroupedWriter

from shared.db import make_pg_pool
from shared.testing import TestPlatform


@pytest.fixture
async def pool(platform: TestPlatform) -> AsyncIterator[asyncpg.Pool]:
    pool = await make_pg_pool(platform.database_urls["ingest"], size=4)
    yield pool
    await pool.close()


def prepared_purchase(event_id: str | None = None) -> events.PreparedEvent:
    tag = uuid.uuid4().hex[:12]
    purchase = PurchaseIn.model_construct(
        event_id=event_id or f"evt-{tag}",
        order_id=f"ord-{tag}",
        customer_id=f"cus-{tag}",
        occurred_at=datetime.now(UTC),
        currency="USD",
        channel="web",
        store_id=None,
        items=[],
        total=Decimal("0"),
    )
    return events.purchase_completed(purchase)


async def statements_that_stored(pool: asyncpg.Pool, source: str) -> int:
    """Rows written by one statement share its transaction id."""
    return int(await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM ingested_events WHERE source = $1", source))


async def test_concurrent_requests_share_statements_and_each_is_answered(pool: asyncpg.Pool) -> None:
    source = f"grouped-{uuid.uuid4().hex[:8]}"
    writer = GroupedWriter(pool, flushes=1)
    requests = [[prepared_purchase()] for _ in range(20)]
    answers = await asyncio.gather(*(writer.store(source, request) for request in requests))
    for request, answer in zip(requests, answers, strict=True):
        [event] = request
        assert answer[event.event_id] == (event.envelope_id, True)
    # One flush at a time: the requests queued before it ran, or while it ran, go together.
    assert await statements_that_stored(pool, source) <= 2


async def test_a_repeat_in_the_same_statement_gets_the_original(pool: asyncpg.Pool) -> None:
    source = f"grouped-{uuid.uuid4().hex[:8]}"
    writer = GroupedWriter(pool, flushes=1)
    first = prepared_purchase()
    repeats = [prepared_purchase(first.event_id) for _ in range(3)]
    # One statement stores one copy (the first in the queue); the repeats are answered its envelope id.
    _, *answers = await asyncio.gather(
        *(writer.store(source, [event]) for event in [prepared_purchase(), first, *repeats])
    )
    assert {answer[first.event_id] for answer in answers} == {(first.envelope_id, True)}
    assert int(await pool.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", first.envelope_id)) == 1


async def test_a_value_postgresql_refuses_fails_only_its_own_request(pool: asyncpg.Pool) -> None:
    source = f"grouped-{uuid.uuid4().hex[:8]}"
    writer = GroupedWriter(pool, flushes=1)
    good = [prepared_purchase() for _ in range(3)]
    bad = replace(prepared_purchase(), payload=b'{"not json')
    outcomes = await asyncio.gather(*(writer.store(source, [event]) for event in [*good, bad]), return_exceptions=True)
    assert isinstance(outcomes[-1], asyncpg.exceptions.DataError)
    for event, answer in zip(good, outcomes[:-1], strict=True):
        assert not isinstance(answer, BaseException)
        assert answer[event.event_id] == (event.envelope_id, True)
