"""Two loyalty workers of one consumer group share a stream while members join and leave."""

from __future__ import annotations

import asyncio
import uuid

from loyalty.handlers import HANDLERS
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from shared.consumer import IdempotentConsumer
from shared.devstack import ensure_topics
from shared.envelope import new_event
from shared.testing import TestPlatform, eventually, producer
from tests.support import ledger_counts, purchase


def worker(platform: TestPlatform, topic: str, group: str) -> IdempotentConsumer:
    return IdempotentConsumer(
        name=group,
        topics=[topic],
        handlers=HANDLERS,
        sessionmaker=async_sessionmaker(platform.engine("loyalty")),
        bootstrap_servers=platform.bootstrap,
        batch_size=50,
    )


async def credited(engine: AsyncEngine, customers: list[str], at_least: int) -> dict[str, tuple[int, int]] | None:
    counts = await ledger_counts(engine, customers)
    return counts if len(counts) >= at_least else None


async def test_rebalancing_workers_credit_every_purchase_exactly_once(platform: TestPlatform) -> None:
    topic, group = f"test.purchases.{uuid.uuid4().hex[:8]}", f"loyalty-rebalance-{uuid.uuid4().hex[:6]}"
    await ensure_topics(platform.bootstrap, {topic: 6})
    bodies = [purchase(total="3.00") for _ in range(2000)]
    customers = [str(b["customer_id"]) for b in bodies]
    async with producer(platform.bootstrap) as kafka:
        for body in bodies:
            envelope = new_event(type="purchase.completed", source="test", subject=body["customer_id"], data=body)
            await kafka.send(topic, envelope.encode(), key=str(body["customer_id"]).encode())
        await kafka.flush()
        # Every tenth event is delivered a second time, as a retrying producer would.
        for body in bodies[::10]:
            envelope = new_event(type="purchase.completed", source="test", subject=body["customer_id"], data=body)
            await kafka.send(topic, envelope.encode(), key=str(body["customer_id"]).encode())
        await kafka.flush()

    engine = platform.engine("loyalty")
    first, second = worker(platform, topic, group), worker(platform, topic, group)
    first_task = asyncio.create_task(first.run())
    await eventually(lambda: credited(engine, customers, 300), timeout=60)
    second_task = asyncio.create_task(second.run())  # joins: partitions move mid-stream
    await eventually(lambda: credited(engine, customers, 1000), timeout=60)
    first_task.cancel()  # leaves: its partitions move to the second worker
    await asyncio.gather(first_task, return_exceptions=True)
    counts = await eventually(lambda: credited(engine, customers, len(customers)), timeout=90)
    second_task.cancel()
    await asyncio.gather(second_task, return_exceptions=True)
    assert set(counts.values()) == {(1, 3)}
