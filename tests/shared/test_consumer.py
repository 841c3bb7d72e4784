"""The idempotent consumer's rules, applied to real records on the real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.consumer import IdempotentConsumer, PermanentError
from shared.devstack import ensure_topics
from shared.envelope import Envelope, new_event
from shared.tables import outbox, processed_messages
from shared.testing import TestPlatform

TOPIC = "test.things.v1"
PARTITION = TopicPartition(TOPIC, 0)


@pytest.fixture(autouse=True)
async def topics(platform: TestPlatform) -> None:
    # Dead letters go to the outbox of the database used here; its relay must find their topic.
    await ensure_topics(platform.bootstrap, {TOPIC: 1, f"{TOPIC}.dlq": 1})


def record(value: bytes, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, b"cus-1", value, None, len(b"cus-1"), len(value), ())


def event(kind: str = "thing.happened") -> Envelope:
    return new_event(type=kind, source="test", subject="cus-1", data={"n": 1})


def consumer(engine: AsyncEngine, handlers: dict[str, Any]) -> IdempotentConsumer:
    return IdempotentConsumer(
        name=f"test-{uuid.uuid4().hex[:8]}",
        topics=[TOPIC],
        handlers=handlers,
        sessionmaker=async_sessionmaker(engine),
        bootstrap_servers="unused:0",
        retry_backoff_seconds=0.0,
    )


def broker_consumer(platform: TestPlatform, topic: str, **options: Any) -> IdempotentConsumer:
    """A consumer of `topic` on the real broker, with no handlers (its fetching and commits are tested)."""
    return IdempotentConsumer(
        name=f"test-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        handlers={},
        sessionmaker=async_sessionmaker(platform.engine("feedback")),
        bootstrap_servers=platform.bootstrap,
        **options,
    )


async def dead_letters(engine: AsyncEngine, consumer_name: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.payload)
            .where(outbox.c.topic == f"{TOPIC}.dlq")
            .where(outbox.c.payload.contains(consumer_name))
        )
        return [row.payload for row in rows]


async def test_redelivered_message_is_applied_once(platform: TestPlatform) -> None:
    calls: list[str] = []

    async def count(session: AsyncSession, event: Envelope) -> None:
        calls.append(event.id)

    engine = platform.engine("feedback")
    worker = consumer(engine, {"thing.happened": [count]})
    message = event()
    for offset in range(3):
        await worker.apply_batch({PARTITION: [record(message.encode(), offset)]})
    assert calls == [message.id]


async def test_transient_failure_is_retried_then_applied(platform: TestPlatform) -> None:
    attempts: list[int] = []

    async def flaky(session: AsyncSession, event: Envelope) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("try again")

    engine = platform.engine("feedback")
    worker = consumer(engine, {"thing.happened": [flaky]})
    await worker.apply_batch({PARTITION: [record(event().encode())]})
    assert len(attempts) == 3 and worker.applied_total == 1
    assert await dead_letters(engine, worker.name) == []


async def test_failing_message_is_dead_lettered_and_the_next_applied(platform: TestPlatform) -> None:
    applied: list[str] = []

    async def picky(session: AsyncSession, event: Envelope) -> None:
        if event.data.get("n") == 1:
            raise PermanentError("n=1 cannot be applied")
        applied.append(event.id)

    engine = platform.engine("feedback")
    worker = consumer(engine, {"thing.happened": [picky]})
    poison, good = event(), new_event(type="thing.happened", source="t", subject="cus-1", data={"n": 2})
    await worker.apply_batch({PARTITION: [record(poison.encode(), 0), record(good.encode(), 1)]})
    assert applied == [good.id]
    letters = await dead_letters(engine, worker.name)
    assert len(letters) == 1 and "n=1 cannot be applied" in letters[0] and poison.id in letters[0]
    async with engine.connect() as conn:
        outcome = await conn.scalar(
            select(processed_messages.c.outcome).where(processed_messages.c.event_id == poison.id)
        )
    assert outcome == "dead_letter"


async def test_handler_effects_roll_back_when_it_fails(platform: TestPlatform) -> None:
    """A failed attempt leaves nothing behind: the savepoint is rolled back before the retry."""
    engine = platform.engine("feedback")
    marker = f"effect-{uuid.uuid4().hex}"

    async def half_done(session: AsyncSession, event: Envelope) -> None:
        await session.execute(processed_messages.insert().values(consumer="effects", event_id=marker))
        raise PermanentError("after the write")

    worker = consumer(engine, {"thing.happened": [half_done]})
    await worker.apply_batch({PARTITION: [record(event().encode())]})
    async with engine.connect() as conn:
        assert (
            await conn.scalar(select(processed_messages.c.event_id).where(processed_messages.c.event_id == marker))
            is None
        )


async def test_unknown_event_types_are_ignored_and_garbage_dead_lettered(platform: TestPlatform) -> None:
    engine = platform.engine("feedback")
    worker = consumer(engine, {})
    await worker.apply_batch({PARTITION: [record(event("other.thing").encode()), record(b"{not json", 1)]})
    letters = await dead_letters(engine, worker.name)
    assert len(letters) == 1 and "not a valid event envelope" in letters[0]


async def test_batch_handler_gets_every_new_event_at_once_and_falls_back_alone(platform: TestPlatform) -> None:
    calls: list[list[str]] = []

    async def count_all(session: AsyncSession, events: Sequence[Envelope]) -> None:
        if any(e.data.get("n") == 13 for e in events) and len(events) > 1:
            raise RuntimeError("unlucky batch")
        calls.append([e.id for e in events])

    engine = platform.engine("feedback")
    worker = IdempotentConsumer(
        name=f"test-{uuid.uuid4().hex[:8]}",
        topics=[TOPIC],
        handlers={},
        batch_handlers={"thing.happened": count_all},
        sessionmaker=async_sessionmaker(engine),
        bootstrap_servers="unused:0",
        retry_backoff_seconds=0.0,
    )
    events = [new_event(type="thing.happened", source="t", subject="c", data={"n": i}) for i in range(5)]
    await worker.apply_batch({PARTITION: [record(e.encode(), i) for i, e in enumerate([*events, events[0]])]})
    assert calls == [[e.id for e in events]]  # one call, the duplicate skipped

    unlucky = [new_event(type="thing.happened", source="t", subject="c", data={"n": n}) for n in (12, 13)]
    await worker.apply_batch({PARTITION: [record(e.encode(), i) for i, e in enumerate(unlucky)]})
    assert calls[1:] == [[unlucky[0].id], [unlucky[1].id]]  # the failed batch re-applied one event at a time


async def test_rewind_reads_from_the_beginning_and_commits_it(platform: TestPlatform) -> None:
    # After a broker reset, offsets committed from positions in the old log must not survive a rebalance.
    topic = f"test.rewind.{uuid.uuid4().hex[:8]}.v1"
    await ensure_topics(platform.bootstrap, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=platform.bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(topic, event().encode(), key=b"cus-1")
    finally:
        await producer.stop()
    worker = broker_consumer(platform, topic)
    client = worker._new_consumer()
    await client.start()
    try:
        first = await _read(client, 3)
        await client.commit({TopicPartition(topic, 0): 3})
        worker.rewind()
        await worker._rewind_assigned(client)
        assert await client.committed(TopicPartition(topic, 0)) == 0
        assert [r.offset for r in await _read(client, 3)] == [r.offset for r in first] == [0, 1, 2]
        assert not worker._rewind
    finally:
        await client.stop()


async def _read(client: AIOKafkaConsumer, count: int) -> list[ConsumerRecord[Any, Any]]:
    records: list[ConsumerRecord[Any, Any]] = []
    for _ in range(100):
        for part in (await client.getmany(timeout_ms=200)).values():
            records.extend(part)
        if len(records) >= count:
            break
    return records


async def test_a_small_batch_soon_after_the_last_waits_and_takes_what_arrived(platform: TestPlatform) -> None:
    # aiokafka fetches a partition again only once its buffered records were taken: what the wait
    # gathers is what the fetches of the other partitions (and the one in flight) bring meanwhile.
    topic = f"test.linger.{uuid.uuid4().hex[:8]}.v1"
    await ensure_topics(platform.bootstrap, {topic: 2})
    worker = broker_consumer(platform, topic, min_batch_interval_ms=3000)
    producer = AIOKafkaProducer(bootstrap_servers=platform.bootstrap, acks="all", enable_idempotence=False)
    client = worker._new_consumer()
    await producer.start()
    await client.start()
    try:
        await producer.send_and_wait(topic, event().encode(), partition=0)
        first: dict[TopicPartition, list[Any]] = {}
        for _ in range(50):
            if first := await worker._next_batch(client):
                break
        assert sum(map(len, first.values())) == 1  # nothing before it: taken at once
        started = asyncio.get_running_loop().time()
        await producer.send_and_wait(topic, event().encode(), partition=0)
        pending = asyncio.create_task(worker._next_batch(client))
        await asyncio.sleep(0.5)
        await producer.send_and_wait(topic, event().encode(), partition=1)  # while the first waits
        second = await pending
        offsets = {tp.partition: [r.offset for r in records] for tp, records in second.items()}
        assert offsets == {0: [1], 1: [0]}  # one batch
        assert asyncio.get_running_loop().time() - started >= 2.0
    finally:
        await client.stop()
        await producer.stop()
