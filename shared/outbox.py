"""Transactional outbox: events are rows written in the business transaction; a relay publishes them.

The relay never relies on a high-water mark (a row with a lower id may commit after a higher one):
it always selects rows still in state 'pending', so a late commit is picked up on the next pass.
Rows are marked 'published' only after the broker acknowledged them (acks=all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError
from sqlalchemy import func, insert, literal_column, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.elements import ColumnClause

from shared.envelope import Envelope
from shared.migrations import OUTBOX_CHANNEL
from shared.tables import outbox

log = logging.getLogger(__name__)

# The states as literals, never bound parameters: the partial indexes are on state = 'pending' and
# state = 'published', and a generic plan for `state = $1` cannot use them. PostgreSQL switched to
# one after five executions and then walked the primary key past every published row: 46 ms per
# relay pass in profiles' database (pg_stat_statements, make bench), 0.3 ms with the index.
PENDING: ColumnClause[str] = literal_column("'pending'")
PUBLISHED: ColumnClause[str] = literal_column("'published'")

# What a send to a topic the broker does not have fails with (after waiting for its metadata).
_MISSING_TOPIC_ERRORS = (KafkaTimeoutError, UnknownTopicOrPartitionError)


class MessageTooLarge(ValueError):
    """The encoded event is over the broker's message size limit (Tansu does not enforce it)."""


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: str
    envelope: Envelope


def outbox_row(message: OutgoingMessage, max_message_bytes: int) -> dict[str, Any]:
    payload = message.envelope.encode()
    if len(payload) + len(message.key.encode()) > max_message_bytes:
        raise MessageTooLarge(f"event {message.envelope.id} is {len(payload)} bytes, over {max_message_bytes}")
    return {
        "event_id": message.envelope.id,
        "topic": message.topic,
        "key": message.key,
        "payload": payload.decode(),
    }


async def add_to_outbox(
    session: AsyncSession, messages: Sequence[OutgoingMessage], *, max_message_bytes: int = 1_048_576
) -> None:
    """Write events in the caller's transaction; they are published once it commits."""
    if messages:
        await session.execute(insert(outbox), [outbox_row(m, max_message_bytes) for m in messages])


async def add_to_outbox_pg(
    connection: asyncpg.Connection, messages: Sequence[OutgoingMessage], *, max_message_bytes: int = 1_048_576
) -> None:
    """add_to_outbox for a plain asyncpg connection (hot paths); one statement for all rows."""
    if not messages:
        return
    rows = [outbox_row(m, max_message_bytes) for m in messages]
    await connection.execute(
        "insert into outbox (event_id, topic, key, payload)"
        " select * from unnest($1::text[], $2::text[], $3::text[], $4::text[])",
        [r["event_id"] for r in rows],
        [r["topic"] for r in rows],
        [r["key"] for r in rows],
        [r["payload"] for r in rows],
    )


# The relay's pass in plain SQL (the states literal, as above). The lock is transaction-scoped, so a
# crashed relay releases it with its connection.
_TRY_LEAD = "SELECT pg_try_advisory_xact_lock($1)"
DUE_ROWS = (
    "SELECT id, topic, key, payload, attempts FROM outbox"
    " WHERE state = 'pending' AND next_attempt_at <= now() ORDER BY id LIMIT $1"
)
_MARK_PUBLISHED = (
    "UPDATE outbox SET state = 'published', published_at = now(), last_error = NULL WHERE id = ANY($1::bigint[])"
)
_SCHEDULE_RETRIES = """
    UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error, next_attempt_at = now() + f.backoff
    FROM unnest($1::bigint[], $2::text[], $3::interval[]) AS f(id, error, backoff)
    WHERE o.id = f.id
"""


class _DueRow(NamedTuple):
    id: int
    topic: str
    key: str
    payload: str
    attempts: int


def relay_lock_key(name: str) -> int:
    """Advisory lock id: one active relay per database keeps per-key order."""
    return zlib.crc32(f"outbox-relay:{name}".encode())


class OutboxRelay:
    """Publishes pending outbox rows in id order, with retries and backoff on failure."""

    def __init__(
        self,
        *,
        name: str,
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
        listen_dsn: str,
        batch_size: int = 1000,
        poll_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.name = name
        self.engine = engine
        self.producer = producer
        self.listen_dsn = listen_dsn
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.retention = retention
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self.published_total = 0
        # End of each partition as this relay's acknowledgements show it. Offsets on a live partition
        # only grow, so an acknowledgement or an end offset below it means the broker lost its log.
        self.partition_ends: dict[tuple[str, int], int] = {}
        self.broker_ends: dict[tuple[str, int], int] = {}
        self._suspects: set[tuple[str, int]] = set()
        self.broker_lost_log = asyncio.Event()
        # Goes up when the known ends are forgotten and when the retained rows are queued again (each
        # broker reset does both). A batch in flight across either may hold acknowledgements from the
        # old broker: marking it published after the rows were queued again would lose it, and noting
        # its offsets would make the new log look lost at once.
        self.resets = 0

    async def republish_retained(self) -> int:
        """Mark every retained published row pending again (the embedded broker lost them)."""
        self.resets += 1
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(outbox)
                .where(outbox.c.state == PUBLISHED)
                .where(outbox.c.published_at > func.now() - self.retention)
                .values(state="pending", next_attempt_at=func.now())
            )
        count = int(result.rowcount or 0)
        log.info("outbox rows queued for republishing", extra={"relay": self.name, "rows": count})
        return count

    async def run(self) -> None:
        """Publish until cancelled; waits for NOTIFY or the poll interval when idle."""
        await self._listen()
        cleanup_every = max(1, int(60 / max(self.poll_seconds, 0.01)))
        idle_rounds = 0
        try:
            while True:
                # Cleared before the pass, not after: a NOTIFY for rows committed while this pass
                # waits for its acknowledgements must start the next pass at once. Cleared after,
                # those rows waited for the next commit's NOTIFY or the poll (up to 0.5 s).
                self._wake.clear()
                try:
                    published = await self.publish_batch()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox relay pass failed", extra={"relay": self.name})
                    published = 0
                    await asyncio.sleep(min(self.max_backoff_seconds, 1.0))
                if published >= self.batch_size:
                    continue
                idle_rounds += 1
                if idle_rounds % cleanup_every == 0:
                    await self._delete_expired()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
        finally:
            await self._unlisten()

    def wake(self) -> None:
        self._wake.set()

    async def publish_batch(self) -> int:
        """One pass: publish up to batch_size pending rows; returns how many the broker acknowledged.

        Straight on the pooled asyncpg connection: through SQLAlchemy the pass's four statements cost
        ~1.5 ms of Python, and at a steady rate every commit upstream makes a pass of one row.
        """
        async with self.engine.connect() as sa_conn:
            conn: asyncpg.Connection = (await sa_conn.get_raw_connection()).driver_connection
            async with conn.transaction():
                if not await conn.fetchval(_TRY_LEAD, relay_lock_key(self.name)):
                    return 0
                rows = [_DueRow(*record) for record in await conn.fetch(DUE_ROWS, self.batch_size)]
                if not rows:
                    return 0
                resets_before = self.resets
                results = await asyncio.gather(*await self._send_all(rows), return_exceptions=True)
                if self.resets != resets_before:
                    # Some acknowledgements may come from the broker that lost its log: publish all again.
                    log.warning(
                        "broker reset while a batch was in flight; it stays pending", extra={"relay": self.name}
                    )
                    return 0
                self._note_acknowledged_offsets(results)
                acked = [row.id for row, res in zip(rows, results, strict=True) if not isinstance(res, BaseException)]
                failed = [(row, res) for row, res in zip(rows, results, strict=True) if isinstance(res, BaseException)]
                if acked:
                    await conn.execute(_MARK_PUBLISHED, acked)
                if failed:
                    await self._schedule_retries(conn, failed)
        self.published_total += len(acked)
        return len(acked)

    def _note_acknowledged_offsets(self, results: list[Any]) -> None:
        known = dict(self.partition_ends)
        for result in results:
            if isinstance(result, BaseException):
                continue
            partition = (result.topic, result.partition)
            if result.offset < known.get(partition, 0):
                self.broker_lost_log.set()
            self.partition_ends[partition] = max(self.partition_ends.get(partition, 0), result.offset + 1)

    def lost_partitions(self, end_offsets: dict[tuple[str, int], int]) -> list[tuple[str, int]]:
        """Partitions the broker lost, given its end offsets now (a missing partition counts as 0).

        Tansu answers ListOffsets "latest" with the last batch's base offset + 1, short of the true end,
        so the test is: empty although this relay saw acknowledgements, or below an end it reported earlier.
        Under load Tansu has now and then answered 0 for a partition it had just acknowledged, so a
        partition counts as lost only when two checks in a row say so; until then the earlier end stays.
        """
        lost, suspects = [], set()
        for partition in self.partition_ends:
            end = end_offsets.get(partition, 0)
            if end == 0 or end < self.broker_ends.get(partition, 0):
                if partition in self._suspects:
                    lost.append(partition)
                else:
                    suspects.add(partition)
                continue
            self.broker_ends[partition] = end
        self._suspects = suspects
        return lost

    def forget_partition_ends(self) -> None:
        """After a broker reset: the new log starts again at 0."""
        self.resets += 1
        self._suspects = set()
        self.partition_ends.clear()
        self.broker_ends.clear()
        self.broker_lost_log.clear()

    async def _send_all(self, rows: Sequence[Any]) -> list[asyncio.Future[Any]]:
        """Queue every row; once a topic turned out missing, its other rows fail at once.

        A send to a topic the broker does not have waits for its metadata until the request timeout
        (no client creates topics): once per topic and batch, not once per row.
        """
        futures, missing = [], set()
        for row in rows:
            if row.topic in missing:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(UnknownTopicOrPartitionError(f"topic {row.topic} is missing"))
            else:
                future = await self._send(row)
                if future.done() and isinstance(future.exception(), _MISSING_TOPIC_ERRORS):
                    missing.add(row.topic)
            futures.append(future)
        return futures

    async def _send(self, row: Any) -> asyncio.Future[Any]:
        """Queue one row; a row the producer refuses outright fails alone instead of blocking the batch."""
        try:
            future: asyncio.Future[Any] = await self.producer.send(
                row.topic, value=row.payload.encode(), key=row.key.encode()
            )
        except Exception as error:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(error)
        return future

    async def _schedule_retries(self, conn: asyncpg.Connection, failed: list[tuple[_DueRow, BaseException]]) -> None:
        """Back off every refused row, in one statement (a missing topic fails all of its rows at once)."""
        log.warning(
            "outbox publish failed, will retry",
            extra={
                "relay": self.name,
                "rows": len(failed),
                "outbox_ids": [row.id for row, _ in failed[:10]],
                "error": repr(failed[0][1]),
            },
        )
        await conn.execute(
            _SCHEDULE_RETRIES,
            [row.id for row, _ in failed],
            [repr(error)[:2000] for _, error in failed],
            [timedelta(seconds=min(self.max_backoff_seconds, 0.1 * 2**row.attempts)) for row, _ in failed],
        )

    async def _delete_expired(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                outbox.delete()
                .where(outbox.c.state == PUBLISHED)
                .where(outbox.c.published_at < func.now() - self.retention)
            )

    async def _listen(self) -> None:
        try:
            self._listener = await asyncpg.connect(self.listen_dsn)
            await self._listener.add_listener(OUTBOX_CHANNEL, lambda *_: self._wake.set())
        except Exception:
            # Polling still works without NOTIFY; only latency suffers.
            log.warning("outbox LISTEN unavailable, polling only", extra={"relay": self.name}, exc_info=True)
            self._listener = None

    async def _unlisten(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """asyncpg.connect() wants a plain postgresql:// URL."""
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)
