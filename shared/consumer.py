"""Idempotent consumer: a message, its effects and its processed row commit in one transaction.

Offsets are committed to Kafka only after the database commit; a redelivered message finds its
(consumer, event_id) row and is skipped. A message that keeps failing is dead-lettered to
`<topic>.dlq` (through the outbox, in the same transaction) and the consumer moves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import transaction_connection
from shared.envelope import Envelope, new_event
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.tables import processed_messages

log = logging.getLogger(__name__)

_CLAIM = """
    INSERT INTO processed_messages (consumer, event_id)
    SELECT DISTINCT $1::text, unnest($2::text[])
    ON CONFLICT DO NOTHING RETURNING event_id
"""

# How often a running consumer logs its progress and positions (stalls show as an unchanged line).
STATUS_EVERY_SECONDS = 30.0
# A rewind whose commit keeps failing (one try per poll, ~10 s in all) is given up on.
MAX_REWIND_ATTEMPTS = 20

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
HandlerMap = Mapping[str, Sequence[Handler]]
# A batch handler takes every new event of its type in a fetched batch at once (set-based work).
# It must give the same result as applying the events one by one, in any order.
BatchHandler = Callable[[AsyncSession, Sequence[Envelope]], Awaitable[None]]
BatchHandlerMap = Mapping[str, BatchHandler]


def merge_handlers(*maps: HandlerMap) -> dict[str, list[Handler]]:
    merged: dict[str, list[Handler]] = {}
    for handler_map in maps:
        for event_type, handlers in handler_map.items():
            merged.setdefault(event_type, []).extend(handlers)
    return merged


class PermanentError(Exception):
    """The message can never be applied (bad data): dead-letter it without retrying."""


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def _is_infrastructure_error(error: BaseException) -> bool:
    """Database or network trouble: retry the whole batch later rather than dead-letter."""
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(error, ConnectionError | OSError | TimeoutError)


class IdempotentConsumer:
    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        handlers: HandlerMap,
        sessionmaker: async_sessionmaker[AsyncSession],
        bootstrap_servers: str,
        batch_size: int = 500,
        max_attempts: int = 3,
        retry_backoff_seconds: float = 0.2,
        max_message_bytes: int = 1_048_576,
        session_timeout_ms: int = 6000,
        batch_handlers: BatchHandlerMap | None = None,
        fetch_max_wait_ms: int = 100,
        min_batch_interval_ms: int = 0,
    ) -> None:
        self.name = name
        self.min_batch_interval = min_batch_interval_ms / 1000
        self._last_batch_at = 0.0
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.batch_handlers = dict(batch_handlers or {})
        self.session_timeout_ms = session_timeout_ms
        self.topics = list(topics)
        self.handlers = handlers
        self.sessionmaker = sessionmaker
        self.bootstrap_servers = bootstrap_servers
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.retry_backoff_seconds = retry_backoff_seconds
        self.max_message_bytes = max_message_bytes
        self.running = False
        self._rewind = False
        self._rewind_attempts = 0
        self._committed: dict[TopicPartition, int] = {}
        self.applied_total = 0
        self.dead_lettered_total = 0
        self._consumer: AIOKafkaConsumer | None = None

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.name,
            client_id=f"{self.name}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            # A topic created (or re-created by a broker that lost its log) after the group was joined
            # is only seen at the next metadata refresh: every 5 s, not the default 5 minutes.
            metadata_max_age_ms=5000,
            # Short timeouts: a member that vanished without leaving (SIGKILL) is replaced quickly.
            session_timeout_ms=self.session_timeout_ms,
            rebalance_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.session_timeout_ms // 10),
        )

    async def run(self) -> None:
        """Consume until cancelled; restarts the Kafka client with backoff on broker errors."""
        backoff = 0.5
        while True:
            self._consumer = self._new_consumer()
            try:
                await self._consumer.start()
                self.running = True
                backoff = 0.5
                await self._consume(self._consumer)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Tansu can answer UNKNOWN_MEMBER_ID under rebalance churn: rejoin and go on.
                log.exception("consumer failed, restarting", extra={"consumer": self.name})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                self.running = False
                await self._stop_client()

    async def _stop_client(self) -> None:
        if self._consumer is not None:
            try:
                # Bounded: a client stopped while still joining its group can wait for ever.
                await asyncio.wait_for(self._consumer.stop(), timeout=10.0)
            except Exception:
                log.warning("consumer stop failed", extra={"consumer": self.name}, exc_info=True)
            self._consumer = None

    def rewind(self) -> None:
        """Read every assigned partition again from its beginning, from the next fetch on.

        For a broker that lost its log: the positions held (and any offsets committed since) point
        into the old log, and reading the new one from there would skip its first records. The
        processed rows make everything read twice change nothing.
        """
        self._rewind = True

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        status_due = time.monotonic() + STATUS_EVERY_SECONDS
        while True:
            if time.monotonic() >= status_due:
                status_due = time.monotonic() + STATUS_EVERY_SECONDS
                self._log_status(consumer)
            if self._rewind and consumer.assignment():  # while (re)joining: after the assignment
                await self._rewind_assigned(consumer)
            batch = await self._next_batch(consumer)
            if not batch:
                continue
            try:
                await self.apply_batch(batch)
            except Exception as error:
                if not _is_infrastructure_error(error):
                    raise
                log.warning("database unavailable, will redeliver batch", extra={"consumer": self.name})
                for tp, records in batch.items():
                    consumer.seek(tp, records[0].offset)
                await asyncio.sleep(1.0)
                continue
            await self._commit_offsets(consumer, batch)

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """The next fetched records; a small batch soon after the last one waits out the minimum interval
        and takes what arrived meanwhile.

        A batch costs its transaction, its statements, an offset commit and a relay pass whatever its
        size: at a steady few hundred events a second, batches of one to five cost several times the
        CPU of the same events in fewer batches, on a machine the APIs share. (aiokafka fetches a
        partition again only once its buffered records were taken, so what the wait gathers is what
        the fetches in flight and those of the other partitions bring.)
        """
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
        batch = await consumer.getmany(timeout_ms=500, max_records=self.batch_size)
        if batch and self.min_batch_interval:
            size = sum(len(records) for records in batch.values())
            wait = self._last_batch_at + self.min_batch_interval - time.monotonic()
            if wait > 0 and size < self.batch_size:
                await asyncio.sleep(wait)
                more = await consumer.getmany(timeout_ms=0, max_records=self.batch_size - size)
                for tp, records in more.items():
                    batch.setdefault(tp, []).extend(records)  # later offsets of a partition after its earlier
            self._last_batch_at = time.monotonic()
        return batch

    def _log_status(self, consumer: AIOKafkaConsumer) -> None:
        """What an operator needs to see a stalled partition: per partition, the next offset and the end."""
        assigned = {f"{tp.topic}[{tp.partition}]": tp for tp in consumer.assignment()}
        log.info(
            "consumer status",
            extra={
                "consumer": self.name,
                "applied": self.applied_total,
                "dead_lettered": self.dead_lettered_total,
                "committed": {name: self._committed.get(tp) for name, tp in assigned.items()},
                "highwater": {name: consumer.highwater(tp) for name, tp in assigned.items()},
            },
        )

    async def _rewind_assigned(self, consumer: AIOKafkaConsumer) -> None:
        """Seek every assigned partition to its beginning and commit that.

        The commit overwrites any offset committed into the new log from a position in the old one,
        which a later rebalance would otherwise resume from. Until it succeeds (a rebalance may be
        under way) the rewind is done again, after the next assignment.
        """
        beginnings = await consumer.beginning_offsets(list(consumer.assignment()))
        for tp, offset in beginnings.items():
            consumer.seek(tp, offset)
        try:
            await consumer.commit(dict(beginnings))
            self._committed.update(beginnings)
        except (CommitFailedError, IllegalStateError, KafkaError) as error:
            self._rewind_attempts += 1
            extra = {"consumer": self.name, "error": repr(error), "attempts": self._rewind_attempts}
            if self._rewind_attempts < MAX_REWIND_ATTEMPTS:
                log.warning("rewind not committed, will rewind again", extra=extra)
                return
            # Reading from the beginning again and again would never get anywhere: go on from here.
            log.error("rewound, but the beginning could not be committed", extra=extra)
        else:
            log.warning("rewound to the beginning of every partition", extra={"consumer": self.name})
        self._rewind, self._rewind_attempts = False, 0

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]
    ) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        try:
            await consumer.commit(offsets)
            self._committed.update(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as error:
            # Partitions moved in a rebalance; the new owner redelivers and the processed rows skip.
            log.warning("offset commit failed", extra={"consumer": self.name, "error": repr(error)})

    async def apply_batch(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]) -> None:
        """Apply a fetched batch in one database transaction.

        Fast path: every message applied in one go, no savepoints. If any handler fails, that
        transaction is rolled back and the batch is applied again message by message, each in a
        savepoint with retries, so one poison message costs only its own batch a second pass.
        """
        records = [(tp.topic, record) for tp, part in batch.items() for record in part]
        try:
            async with self.sessionmaker() as session, session.begin():
                applied = await self._apply_records(session, records, isolated=False)
            self.applied_total += applied
            return
        except Exception as error:
            if _is_infrastructure_error(error):
                raise
            log.info("batch failed, applying message by message", extra={"consumer": self.name, "error": repr(error)})
        async with self.sessionmaker() as session, session.begin():
            self.applied_total += await self._apply_records(session, records, isolated=True)

    async def _apply_records(
        self, session: AsyncSession, records: Sequence[tuple[str, ConsumerRecord[Any, Any]]], *, isolated: bool
    ) -> int:
        relevant: list[tuple[str, ConsumerRecord[Any, Any], Envelope]] = []
        for topic, record in records:
            try:
                event = Envelope.decode(record.value)
            except (ValueError, ValidationError) as error:
                await self._dead_letter(session, topic, record, None, f"not a valid event envelope: {error}")
                continue
            if event.type in self.handlers or event.type in self.batch_handlers:  # others: not our business
                relevant.append((topic, record, event))
        unclaimed = await self._claim(session, [event.id for _, _, event in relevant])
        applied = 0
        grouped: dict[str, list[Envelope]] = {}
        for topic, record, event in relevant:
            if event.id not in unclaimed:
                continue  # already applied (or earlier in this batch): a redelivery changes nothing
            unclaimed.discard(event.id)
            if isolated:
                applied += await self._apply_with_retries(session, topic, record, event, self._handlers_for(event))
            elif event.type in self.batch_handlers:
                grouped.setdefault(event.type, []).append(event)
            else:
                for handler in self.handlers[event.type]:
                    await handler(session, event)
                applied += 1
        for event_type, events in grouped.items():
            await self.batch_handlers[event_type](session, events)
            applied += len(events)
        return applied

    def _handlers_for(self, event: Envelope) -> Sequence[Handler]:
        """Per-message handlers; a batch handler applied to a batch of one in the isolated pass."""
        batch_handler = self.batch_handlers.get(event.type)
        if batch_handler is None:
            return self.handlers[event.type]

        async def one(session: AsyncSession, single: Envelope) -> None:
            await batch_handler(session, [single])

        return [one]

    async def _claim(self, session: AsyncSession, event_ids: list[str]) -> set[str]:
        """Insert processed rows for all ids at once; returns the ids not seen before.

        The batch's first statement, straight on its asyncpg connection (through SQLAlchemy Core it
        cost more Python than the insert costs PostgreSQL, once per batch however small).
        """
        if not event_ids:
            return set()
        connection = await transaction_connection(session)
        rows = await connection.fetch(_CLAIM, self.name, event_ids)
        return {row[0] for row in rows}

    async def _apply_with_retries(
        self,
        session: AsyncSession,
        topic: str,
        record: ConsumerRecord[Any, Any],
        event: Envelope,
        handlers: Sequence[Handler],
    ) -> int:
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with session.begin_nested():
                    for handler in handlers:
                        await handler(session, event)
                return 1
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if _is_infrastructure_error(error):
                    raise
                permanent = isinstance(error, PermanentError | ValidationError | ValueError | LookupError)
                if permanent or attempt == self.max_attempts:
                    reason = f"{type(error).__name__}: {error}"
                    await self._dead_letter(session, topic, record, event, reason, attempts=attempt)
                    return 0
                log.warning(
                    "handler failed, retrying",
                    extra={
                        "consumer": self.name,
                        "event_id": event.id,
                        "attempt": attempt,
                        "error": repr(error),
                    },
                )
                await asyncio.sleep(self.retry_backoff_seconds * attempt)
        return 0  # max_attempts < 1: nothing was tried

    async def _dead_letter(
        self,
        session: AsyncSession,
        topic: str,
        record: ConsumerRecord[Any, Any],
        event: Envelope | None,
        reason: str,
        attempts: int = 1,
    ) -> None:
        raw = record.value.decode("utf-8", errors="replace") if record.value else None
        key = record.key.decode("utf-8", errors="replace") if record.key else ""
        letter = new_event(
            type="message.dead_lettered",
            source=self.name,
            subject=key or "unknown",
            data={
                "consumer": self.name,
                "topic": topic,
                "partition": record.partition,
                "offset": record.offset,
                "event_id": event.id if event else None,
                "event_type": event.type if event else None,
                "reason": reason[:4000],
                "attempts": attempts,
                "original": raw[: self.max_message_bytes // 2] if raw else None,
                "failed_at": datetime.now(UTC).isoformat(),
            },
        )
        if event is not None:
            await session.execute(
                processed_messages.update()
                .where(processed_messages.c.consumer == self.name)
                .where(processed_messages.c.event_id == event.id)
                .values(outcome="dead_letter")
            )
        await add_to_outbox(
            session,
            [OutgoingMessage(dead_letter_topic(topic), key or "unknown", letter)],
            max_message_bytes=self.max_message_bytes,
        )
        self.dead_lettered_total += 1
        log.error(
            "message dead-lettered",
            extra={"consumer": self.name, "topic": topic, "offset": record.offset, "reason": reason[:500]},
        )
