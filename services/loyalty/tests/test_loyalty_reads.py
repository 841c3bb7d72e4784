"""Member answers read together (loyalty.reads) against the real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from loyalty import api, service
from loyalty.config import LoyaltySettings
from loyalty.events import PurchaseCompleted
from loyalty.reads import MemberReads
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.db import make_pg_pool
from shared.testing import TestPlatform


class CountingPool:
    """The pool, counting the connections taken: one per statement here."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.acquired = pool, 0

    def acquire(self) -> Any:
        self.acquired += 1
        return self.pool.acquire()


@pytest.fixture
async def pool(platform: TestPlatform) -> AsyncIterator[CountingPool]:
    pool = await make_pg_pool(platform.database_urls["loyalty"], size=4)
    try:
        yield CountingPool(pool)
    finally:
        await pool.close()


def reads_from(pool: CountingPool) -> MemberReads:
    return MemberReads(lambda: pool, api.RulesCache(None, 5.0), LoyaltySettings(consumers_enabled=False))


async def member(platform: TestPlatform, total: str) -> str:
    customer_id = f"cus-{uuid.uuid4().hex[:12]}"
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        await service.enroll(session, customer_id=customer_id)
        purchase = PurchaseCompleted(
            order_id=f"ord-{uuid.uuid4().hex[:8]}",
            customer_id=customer_id,
            currency="USD",
            total=total,
            occurred_at=datetime.now(UTC),
        )
        await service.credit_purchase(session, purchase=purchase, program=None)
    return customer_id


def points(answer: bytes | None) -> int:
    assert answer is not None
    value: int = orjson.loads(answer)["points"]
    return value


async def test_requests_waiting_together_share_one_statement(platform: TestPlatform, pool: CountingPool) -> None:
    first, second = await member(platform, "10.00"), await member(platform, "20.00")
    reads = reads_from(pool)
    answers = await asyncio.gather(*(reads.answer(c) for c in (first, second, first, "nobody-here")))
    assert [points(a) for a in answers[:3]] == [10, 20, 10]
    assert answers[3] is None
    assert orjson.loads(answers[1] or b"")["customer_id"] == second
    assert pool.acquired == 1


async def test_an_id_the_database_refuses_fails_alone(platform: TestPlatform, pool: CountingPool) -> None:
    mine = await member(platform, "30.00")
    reads = reads_from(pool)
    good, bad = await asyncio.gather(reads.answer(mine), reads.answer("nul\x00byte"), return_exceptions=True)
    assert points(good) == 30  # type: ignore[arg-type]
    assert isinstance(bad, asyncpg.exceptions.DataError)  # the 422 the app answers for such a value, as before


async def test_an_answer_shows_what_was_committed_before_it_was_asked(
    platform: TestPlatform, pool: CountingPool
) -> None:
    mine = await member(platform, "50.00")
    reads = reads_from(pool)
    assert points(await reads.answer(mine)) == 50
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        await service.redeem(session, customer_id=mine, points=20, reason="voucher")
    assert points(await reads.answer(mine)) == 30
