"""The outbox relay on the real database and broker: order, late commits, failures and retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import make_pg_pool
from shared.devstack import ensure_topics
from shared.envelope import new_event
from shared.outbox import (
    DUE_ROWS,
    MessageTooLarge,
    OutboxRelay,
    OutgoingMessage,
    add_to_outbox,
    add_to_outbox_pg,
    asyncpg_dsn,
)
from shared.replay import replay
from shared.tables import outbox
from shared.testing import TestPlatform, read_topic

TOPIC = "test.outbox.v1"


@pytest.fixture
async def engine(platform: TestPlatform) -> AsyncEngine:
    await ensure_topics(platform.bootstrap, {TOPIC: 1})
    return platform.engine("feedback")  # any service database: the outbox table is the same


@pytest.fixture
async def kafka(platform: TestPlatform) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=platform.bootstrap, acks="all", enable_idempotence=False)
    await client.start()
    yield client
    await client.stop()


def relay(engine: AsyncEngine, producer: AIOKafkaProducer, platform: TestPlatform) -> OutboxRelay:
    return OutboxRelay(
        name=f"test-{uuid.uuid4().hex}",
        engine=engine,
        producer=producer,
        listen_dsn=asyncpg_dsn(platform.database_urls["feedback"]),
        max_backoff_seconds=0.2,
    )


def message(tag: str, size: int = 10) -> OutgoingMessage:
    return OutgoingMessage(
        TOPIC, "cus-1", new_event(type="test.happened", source="t", subject="c", data={"tag": tag, "pad": "x" * size})
    )


async def drain(engine: AsyncEngine, producer: AIOKafkaProducer, platform: TestPlatform) -> None:
    while await relay(engine, producer, platform).publish_batch():
        pass


async def states(engine: AsyncEngine, event_ids: list[str]) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(outbox.c.event_id, outbox.c.state).where(outbox.c.event_id.in_(event_ids)))
        return {row.event_id: row.state for row in rows}


async def test_row_committed_after_a_later_row_is_still_published(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    early, late = message("early"), message("late")
    sessions = async_sessionmaker(engine)
    async with sessions() as slow, slow.begin():
        await add_to_outbox(slow, [early])  # takes the lower id, commits last
        async with sessions() as fast, fast.begin():
            await add_to_outbox(fast, [late])
        await drain(engine, kafka, platform)
        assert await states(engine, [late.envelope.id]) == {late.envelope.id: "published"}
    await drain(engine, kafka, platform)
    ids = [early.envelope.id, late.envelope.id]
    assert await states(engine, ids) == dict.fromkeys(ids, "published")


async def test_rows_are_published_in_commit_order_per_key(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    tags = [f"n{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
    async with async_sessionmaker(engine)() as session, session.begin():
        await add_to_outbox(session, [message(tag) for tag in tags])
    await drain(engine, kafka, platform)
    records = await read_topic(platform.bootstrap, TOPIC, expect=10_000, timeout=3)
    seen = [tag for r in records for tag in tags if f'"{tag}"'.encode() in r.value]
    assert seen == tags


async def test_a_refused_row_is_retried_with_backoff_and_others_go_on(
    engine: AsyncEngine, platform: TestPlatform, kafka: AIOKafkaProducer
) -> None:
    small = AIOKafkaProducer(
        bootstrap_servers=platform.bootstrap, acks="all", enable_idempotence=False, max_request_size=2_000
    )
    await small.start()
    big, fine = message("big", size=5_000), message("fine")
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            await add_to_outbox(session, [big, fine])
        await drain(engine, small, platform)
    finally:
        await small.stop()
    assert await states(engine, [big.envelope.id, fine.envelope.id]) == {
        big.envelope.id: "pending",
        fine.envelope.id: "published",
    }
    async with engine.connect() as conn:
        row = (await conn.execute(select(outbox).where(outbox.c.event_id == big.envelope.id))).one()
    # At least once: its first backoff is 0.1 s, and on a loaded machine drain's next pass may come later.
    assert row.attempts >= 1 and "MessageSizeTooLarge" in row.last_error
    assert row.next_attempt_at > row.created_at
    async with engine.begin() as conn:  # skip the backoff wait
        await conn.execute(update(outbox).where(outbox.c.id == row.id).values(next_attempt_at=row.created_at))
    await drain(engine, kafka, platform)
    assert await states(engine, [big.envelope.id]) == {big.envelope.id: "published"}


async def test_rows_for_a_missing_topic_wait_once_per_batch_and_the_others_go_on(
    engine: AsyncEngine, platform: TestPlatform
) -> None:
    quick = AIOKafkaProducer(bootstrap_servers=platform.bootstrap, acks="all", request_timeout_ms=1000)
    await quick.start()
    missing = f"test.missing.{uuid.uuid4().hex[:8]}.v1"
    lost = [OutgoingMessage(missing, "cus-1", message(f"lost-{i}").envelope) for i in range(5)]
    fine = message("fine-beside-missing")
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            await add_to_outbox(session, [*lost, fine])
        started = time.monotonic()
        await relay(engine, quick, platform).publish_batch()
        assert time.monotonic() - started < 4  # one metadata wait for the topic, not one per row
    finally:
        await quick.stop()
    ids = [m.envelope.id for m in lost]
    assert await states(engine, [*ids, fine.envelope.id]) == dict.fromkeys(ids, "pending") | {
        fine.envelope.id: "published"
    }
    async with engine.begin() as conn:
        backed_off = (await conn.execute(select(outbox.c.attempts).where(outbox.c.event_id.in_(ids)))).scalars()
        assert list(backed_off) == [1] * len(ids)  # every refused row backed off, in one statement
        await conn.execute(outbox.delete().where(outbox.c.event_id.in_(ids)))  # nobody else's relay should trip


async def test_event_over_the_size_limit_is_refused_at_write_time(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        with pytest.raises(MessageTooLarge):
            await add_to_outbox(session, [message("huge", size=2_000)], max_message_bytes=1_000)


async def test_retained_rows_are_republished_after_a_broker_restart(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    kept = message("kept")
    async with async_sessionmaker(engine)() as session, session.begin():
        await add_to_outbox(session, [kept])
    await drain(engine, kafka, platform)
    republisher = relay(engine, kafka, platform)
    republisher.retention = timedelta(hours=1)
    assert await republisher.republish_retained() >= 1
    assert await states(engine, [kept.envelope.id]) == {kept.envelope.id: "pending"}
    await drain(engine, kafka, platform)
    assert await states(engine, [kept.envelope.id]) == {kept.envelope.id: "published"}


class ResetMidBatchRelay(OutboxRelay):
    """A relay whose broker reset is detected (and the retained rows queued again) while a batch is in flight."""

    async def _send(self, row: Any) -> asyncio.Future[Any]:
        future = await super()._send(row)
        if self.resets == 0:
            await self.republish_retained()
        return future


async def test_a_batch_in_flight_across_a_broker_reset_is_not_marked_published(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    # Its acknowledgements may come from the broker that lost its log, after the rows were queued again.
    in_flight = [message("in-flight-1"), message("in-flight-2")]
    async with async_sessionmaker(engine)() as session, session.begin():
        await add_to_outbox(session, in_flight)
    await drain(engine, kafka, platform)  # earlier tests' rows: this batch holds only these two
    ids = [m.envelope.id for m in in_flight]
    async with engine.begin() as conn:
        await conn.execute(update(outbox).where(outbox.c.event_id.in_(ids)).values(state="pending"))
    racing = ResetMidBatchRelay(
        name=f"test-{uuid.uuid4().hex}", engine=engine, producer=kafka, listen_dsn="", retention=timedelta(hours=1)
    )
    assert await racing.publish_batch() == 0
    assert await states(engine, ids) == dict.fromkeys(ids, "pending")
    while await racing.publish_batch():
        pass
    assert await states(engine, ids) == dict.fromkeys(ids, "published")


async def test_rows_written_through_plain_asyncpg_are_published(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    pool = await make_pg_pool(platform.database_urls["feedback"], size=2)
    first, second = message("pg-1"), message("pg-2")
    try:
        async with pool.acquire() as connection, connection.transaction():
            await add_to_outbox_pg(connection, [first, second])
    finally:
        await pool.close()
    await drain(engine, kafka, platform)
    ids = [first.envelope.id, second.envelope.id]
    assert await states(engine, ids) == dict.fromkeys(ids, "published")


async def test_replay_queues_published_rows_again(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    again = message("again")
    async with async_sessionmaker(engine)() as session, session.begin():
        await add_to_outbox(session, [again])
    await drain(engine, kafka, platform)
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert await replay(platform.database_urls["feedback"], since=since, topic=TOPIC) >= 1
    assert await states(engine, [again.envelope.id]) == {again.envelope.id: "pending"}
    await drain(engine, kafka, platform)
    assert await states(engine, [again.envelope.id]) == {again.envelope.id: "published"}


def acknowledgement(partition: int, offset: int) -> RecordMetadata:
    return RecordMetadata(TOPIC, partition, TopicPartition(TOPIC, partition), offset, -1, -1, None)


def test_an_acknowledged_offset_below_a_known_end_means_the_broker_lost_its_log(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    watcher = relay(engine, kafka, platform)
    watcher._note_acknowledged_offsets([acknowledgement(0, 7), acknowledgement(1, 3)])
    watcher._note_acknowledged_offsets([acknowledgement(0, 8), acknowledgement(1, 4)])
    assert not watcher.broker_lost_log.is_set()
    watcher._note_acknowledged_offsets([acknowledgement(0, 0)])  # a new, empty log
    assert watcher.broker_lost_log.is_set()
    watcher.forget_partition_ends()
    assert not watcher.broker_lost_log.is_set() and watcher.partition_ends == {}


def test_broker_end_offsets_that_go_back_or_to_zero_mean_a_lost_log(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    watcher = relay(engine, kafka, platform)
    watcher._note_acknowledged_offsets([acknowledgement(0, 99), acknowledgement(1, 49), acknowledgement(2, 9)])
    # Tansu answers "latest" with the last batch's base offset + 1: short of the true end, not a loss.
    assert watcher.lost_partitions({(TOPIC, 0): 61, (TOPIC, 1): 50, (TOPIC, 2): 10}) == []
    assert watcher.lost_partitions({(TOPIC, 0): 61, (TOPIC, 1): 12}) == []  # once could be a stray answer
    assert watcher.lost_partitions({(TOPIC, 0): 62, (TOPIC, 1): 13}) == [(TOPIC, 1), (TOPIC, 2)]


def test_one_stray_answer_of_zero_is_not_a_lost_log(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    watcher = relay(engine, kafka, platform)
    watcher._note_acknowledged_offsets([acknowledgement(0, 20)])
    assert watcher.lost_partitions({(TOPIC, 0): 0}) == []
    assert watcher.lost_partitions({(TOPIC, 0): 21}) == []
    assert watcher.lost_partitions({(TOPIC, 0): 0}) == []  # each stray answer alone
    assert watcher.broker_ends == {(TOPIC, 0): 21}


async def test_the_relays_pass_uses_the_pending_index_also_in_a_generic_plan(platform: TestPlatform) -> None:
    """PostgreSQL plans a prepared statement generically after five runs: a bound state could not use
    the partial index, and the pass walked every published row."""
    conn = await asyncpg.connect(asyncpg_dsn(platform.database_urls["feedback"]))
    try:
        await conn.execute("set plan_cache_mode = force_generic_plan")
        await conn.execute(f"prepare relay_pass(int) as {DUE_ROWS}")
        plan = "\n".join(row[0] for row in await conn.fetch("explain execute relay_pass(1000)"))
    finally:
        await conn.close()
    assert "outbox_pending" in plan, plan


async def test_rows_committed_while_a_pass_is_in_flight_are_published_without_waiting_for_the_poll(
    engine: AsyncEngine, kafka: AIOKafkaProducer, platform: TestPlatform
) -> None:
    first, second = message("first"), message("during")
    sessions = async_sessionmaker(engine)

    class CommitDuringSend(OutboxRelay):
        sent_once = False

        async def _send_all(self, rows: Any) -> list[asyncio.Future[Any]]:
            if not self.sent_once:  # after the pass selected its rows: commit another, let its NOTIFY in
                self.sent_once = True
                async with sessions() as session, session.begin():
                    await add_to_outbox(session, [second])
                await asyncio.sleep(0.3)
            return await super()._send_all(rows)

    relay = CommitDuringSend(
        name=f"test-{uuid.uuid4().hex}",
        engine=engine,
        producer=kafka,
        listen_dsn=asyncpg_dsn(platform.database_urls["feedback"]),
        poll_seconds=30,  # only a NOTIFY can start the next pass within the test's time
    )
    await drain(engine, kafka, platform)  # rows other tests left
    async with sessions() as session, session.begin():
        await add_to_outbox(session, [first])
    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if set((await states(engine, [first.envelope.id, second.envelope.id])).values()) == {"published"}:
                break
            await asyncio.sleep(0.05)
        assert await states(engine, [first.envelope.id, second.envelope.id]) == {
            first.envelope.id: "published",
            second.envelope.id: "published",
        }
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
