"""Faults: the broker restarting empty mid-stream, a consumer killed with SIGKILL mid-batch, every
message delivered three times.

Each test checks that no event is lost, no effect is applied twice and no partition stalls
(everything is credited within the time limit).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import AsyncIterator

import ingest.main
import loyalty.main
import profiles.main
import pytest
from ingest.config import IngestSettings
from loyalty.config import LoyaltySettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.devstack import EmbeddedBroker, free_port
from shared.envelope import new_event
from shared.testing import TestPlatform, eventually, producer, running_app
from shared.topics import PURCHASES, create_all
from tests.support import ledger_counts, purchase


async def credited(engine: AsyncEngine, customers: list[str]) -> dict[str, tuple[int, int]] | None:
    counts = await ledger_counts(engine, customers)
    return counts if len(counts) == len(customers) else None


@pytest.fixture
async def volatile_broker() -> AsyncIterator[EmbeddedBroker]:
    broker = EmbeddedBroker(free_port())
    broker.start()
    await create_all(broker.bootstrap)
    yield broker
    broker.stop()


async def test_broker_restarted_mid_stream_loses_nothing(
    platform: TestPlatform, api_headers: dict[str, str], volatile_broker: EmbeddedBroker
) -> None:
    volatile = {"KAFKA_BOOTSTRAP_SERVERS": volatile_broker.bootstrap, "CX_OUTBOX_REPUBLISH_ON_START": "true"}
    volatile |= {"CX_BROKER_CHECK_SECONDS": "0.5"}
    bodies = [purchase(total="2.00") for _ in range(300)]
    customers = [str(b["customer_id"]) for b in bodies]
    engine = platform.engine("loyalty")
    with pytest.MonkeyPatch.context() as env:
        for name, value in volatile.items():
            env.setenv(name, value)
        ingest_app, loyalty_app = ingest.main.create_app(IngestSettings()), loyalty.main.create_app(LoyaltySettings())
    async with running_app(ingest_app) as api, running_app(loyalty_app):
        for body in bodies[:150]:
            assert (await api.post("/v1/purchases", json=body, headers=api_headers)).status_code == 202
        await eventually(lambda: ledger_counts(engine, customers[:20]), timeout=120)
        volatile_broker.restart()  # memory storage: every topic, message and offset is gone
        for body in bodies[150:]:
            assert (await api.post("/v1/purchases", json=body, headers=api_headers)).status_code == 202
        counts = await eventually(lambda: credited(engine, customers), timeout=120, interval=0.5)
    lost = len(customers) - len(counts)
    applied_twice = sum(1 for entries, _ in counts.values() if entries > 1)
    assert (lost, applied_twice) == (0, 0)
    assert set(counts.values()) == {(1, 2)}


async def test_consumer_killed_mid_batch_applies_every_event_once(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    bodies = [purchase(total="4.00") for _ in range(1500)]
    customers = [str(b["customer_id"]) for b in bodies]
    engine = platform.engine("loyalty")
    async with running_app(ingest.main.create_app()) as api:
        limit = asyncio.Semaphore(16)

        async def post(body: dict[str, object]) -> None:
            async with limit:
                assert (await api.post("/v1/purchases", json=body, headers=api_headers)).status_code == 202

        await asyncio.gather(*(post(b) for b in bodies))
        env = os.environ | {"CX_CONSUMER_BATCH_SIZE": "50"}
        worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "loyalty.worker", env=env)
        try:
            await eventually(lambda: _some_credited(engine, customers, 100), timeout=60, interval=0.05)
        finally:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        partial = len(await ledger_counts(engine, customers))
        assert partial < len(customers), "the worker finished before it was killed"
        async with running_app(loyalty.main.create_app()):
            counts = await eventually(lambda: credited(engine, customers), timeout=120, interval=0.5)
    assert set(counts.values()) == {(1, 4)}


async def _some_credited(engine: AsyncEngine, customers: list[str], at_least: int) -> bool:
    return len(await ledger_counts(engine, customers)) >= at_least


async def test_every_message_delivered_three_times_is_applied_once(platform: TestPlatform) -> None:
    """300 purchases, each on the topic three times in shuffled order, read by loyalty and profiles."""
    bodies = [purchase(total="3.00") for _ in range(300)]
    customers = [str(b["customer_id"]) for b in bodies]
    envelopes = [
        new_event(type="purchase.completed", source="test", subject=str(b["customer_id"]), data=b) for b in bodies
    ]
    deliveries = [envelope for envelope in envelopes for _ in range(3)]
    random.Random(7).shuffle(deliveries)
    async with running_app(loyalty.main.create_app()), running_app(profiles.main.create_app()):
        async with producer(platform.bootstrap) as kafka:
            sent = [await kafka.send(PURCHASES, e.encode(), key=e.subject.encode()) for e in deliveries]
            await asyncio.gather(*sent)
        counts = await eventually(lambda: credited(platform.engine("loyalty"), customers), timeout=120, interval=0.5)
        orders = await eventually(lambda: _profile_orders(platform.engine("profiles"), customers), timeout=120)
    lost = len(customers) - len(counts)
    applied_twice = sum(1 for entries, _ in counts.values() if entries > 1)
    counted_twice = sum(1 for n in orders.values() if n > 1)
    assert (lost, applied_twice, counted_twice) == (0, 0, 0)
    assert set(counts.values()) == {(1, 3)} and set(orders.values()) == {1}


async def _profile_orders(engine: AsyncEngine, customers: list[str]) -> dict[str, int] | None:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("select customer_id, orders from customers where customer_id = any(:ids)"), {"ids": customers}
        )
        found = {row[0]: int(row[1]) for row in rows}
    return found if len(found) == len(customers) and all(found.values()) else None
