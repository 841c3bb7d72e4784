"""What a running service holds: database, Kafka producer, outbox relay, consumer and jobs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.apikeys import API_KEY_HANDLERS
from shared.auth import make_verifiers
from shared.consumer import BatchHandlerMap, HandlerMap, IdempotentConsumer, merge_handlers
from shared.db import make_engine, make_pg_pool, make_sessionmaker
from shared.devstack import ensure_topics
from shared.erasure import ERASURE_HANDLERS
from shared.outbox import OutboxRelay, asyncpg_dsn
from shared.settings import ServiceSettings
from shared.topics import API_KEYS, all_topics

log = logging.getLogger(__name__)

# A shared advisory lock a running consumer holds in its service's database, so an API process
# (CX_API_ONLY) can tell in /readyz whether some worker's consumer is running, wherever it runs.
CONSUMER_PRESENCE_LOCK = 0x63_78_63_6E  # "cxcn"

Job = Callable[["ServiceRuntime"], Coroutine[Any, Any, None]]


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    # Tansu has no InitProducerId: acks=all without idempotence; consumers dedupe instead.
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-relay",
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_request_size=settings.max_message_bytes + 65_536,
        request_timeout_ms=15_000,
    )


class ServiceRuntime:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        consumes: Sequence[str] = (),
        handlers: HandlerMap | None = None,
        batch_handlers: BatchHandlerMap | None = None,
        jobs: Sequence[Job] = (),
    ) -> None:
        self.settings = settings
        self.engine = make_engine(
            settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
        )
        self.sessionmaker: async_sessionmaker[AsyncSession] = make_sessionmaker(self.engine)
        self.api_keys, self.customer_tokens = make_verifiers(settings, self.sessionmaker)
        self.pg_pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        self.consumer: IdempotentConsumer | None = None
        # An API-only process leaves the consumer, the relay and the jobs to the worker process.
        self.background = not settings.api_only
        if settings.consumers_enabled and self.background:
            # Every service also keeps its copy of the API key hashes current.
            self.consumer = IdempotentConsumer(
                name=settings.service_name,
                topics=[*consumes, API_KEYS],
                handlers=merge_handlers(handlers or {}, API_KEY_HANDLERS, ERASURE_HANDLERS),
                sessionmaker=self.sessionmaker,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                batch_size=settings.consumer_batch_size,
                max_attempts=settings.consumer_max_attempts,
                retry_backoff_seconds=settings.consumer_retry_backoff_seconds,
                max_message_bytes=settings.max_message_bytes,
                session_timeout_ms=settings.consumer_session_timeout_ms,
                fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
                min_batch_interval_ms=settings.consumer_min_batch_interval_ms,
                batch_handlers=batch_handlers,
            )
        self.jobs = list(jobs) if self.background else []
        self.producer_ready = False
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self.pg_pool = await make_pg_pool(self.settings.database_url, size=self.settings.db_fast_pool_size)
        self._tasks.append(asyncio.create_task(self._run_relay(), name="outbox-relay"))
        if self.consumer is not None:
            self._tasks.append(asyncio.create_task(self.consumer.run(), name="consumer"))
            self._tasks.append(asyncio.create_task(self._announce_consumer(self.consumer), name="presence"))
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(job(self), name=getattr(job, "__name__", "job")))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded, so a stuck client cannot keep a stopping service alive.
            stopped, stuck = await asyncio.wait(self._tasks, timeout=15.0)
            for task in stopped:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("task ended with an error", extra={"task": task.get_name()}, exc_info=task.exception())
            for task in stuck:
                log.warning("task did not stop in time", extra={"task": task.get_name()})
        self._tasks.clear()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None
            self.producer_ready = False
        if self.pg_pool is not None:
            await self.pg_pool.close()
            self.pg_pool = None
        await self.engine.dispose()

    async def _start_producer(self) -> AIOKafkaProducer:
        backoff = 0.5
        while True:
            producer = make_producer(self.settings)
            try:
                await producer.start()
                self.producer, self.producer_ready = producer, True
                return producer
            except Exception as error:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("broker unreachable, retrying", extra={"error": repr(error), "in_seconds": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _run_relay(self) -> None:
        producer = await self._start_producer()  # also an API-only process's Kafka readiness probe
        if not self.settings.relay_enabled or not self.background:
            return
        self.relay = OutboxRelay(
            name=self.settings.service_name,
            engine=self.engine,
            producer=producer,
            listen_dsn=asyncpg_dsn(self.settings.database_url),
            batch_size=self.settings.relay_batch_size,
            poll_seconds=self.settings.relay_poll_seconds,
            max_backoff_seconds=self.settings.relay_max_backoff_seconds,
            retention=timedelta(hours=self.settings.outbox_retention_hours),
        )
        if self.settings.outbox_republish_on_start:
            await self.relay.republish_retained()
            self._tasks.append(asyncio.create_task(self._watch_for_broker_reset(producer), name="broker-watch"))
        await self.relay.run()

    async def _watch_for_broker_reset(self, producer: AIOKafkaProducer) -> None:
        """A memory-only broker that restarts comes back empty: recreate topics, publish the outbox again.

        A missing topic is not enough of a sign: clients' metadata requests can make a restarted broker
        auto-create topics before this looks. So the relay remembers each partition's end from its
        acknowledgements; an acknowledged offset or a broker end offset (ListOffsets latest) below it
        means the log is gone. Consumers rejoin by themselves; this process's consumer is rewound to
        the beginning of the new log (its positions point into the old one), and idempotence absorbs
        the repeats.
        """
        assert self.relay is not None
        relay = self.relay
        expected = set(all_topics(self.settings.topic_partitions))
        offsets_reader: AIOKafkaConsumer | None = None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(relay.broker_lost_log.wait(), timeout=self.settings.broker_check_seconds)
                try:
                    if offsets_reader is None:
                        offsets_reader = await self._start_offsets_reader()
                    reason = await self._broker_lost_log(producer, offsets_reader, relay, expected)
                    if reason:
                        await self._recover_from_broker_reset(relay, reason)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("broker check failed", exc_info=True)
                    if offsets_reader is not None:
                        with contextlib.suppress(Exception):
                            await offsets_reader.stop()
                        offsets_reader = None
        finally:
            if offsets_reader is not None:
                with contextlib.suppress(Exception):
                    await offsets_reader.stop()

    async def _broker_lost_log(
        self, producer: AIOKafkaProducer, reader: AIOKafkaConsumer, relay: OutboxRelay, expected: set[str]
    ) -> str:
        """Why the broker looks reset, or "" when it does not."""
        if relay.broker_lost_log.is_set():
            return "an acknowledged offset went back"
        if not expected <= set((await producer.client.fetch_all_metadata()).topics()):
            return "topics are missing"
        before, ends = dict(relay.broker_ends), await self._end_offsets(reader, relay)
        lost = sorted(relay.lost_partitions(ends))[:5]
        changes = ", ".join(f"{t}[{p}] {before.get((t, p))} -> {ends.get((t, p), 0)}" for t, p in lost)
        return f"partition ends went back: {changes}" if lost else ""

    async def _recover_from_broker_reset(self, relay: OutboxRelay, reason: str) -> None:
        log.warning("broker lost its log: recreating topics, republishing the outbox", extra={"why": reason})
        relay.forget_partition_ends()
        if self.consumer is not None:
            self.consumer.rewind()
        expected = all_topics(self.settings.topic_partitions)
        await ensure_topics(self.settings.kafka_bootstrap_servers, expected)
        if self.producer is not None:  # sends to the recreated topics need their partitions at once
            await self.producer.client.force_metadata_update()
            self._check_partition_counts(self.producer, expected)
        await relay.republish_retained()
        relay.wake()

    @staticmethod
    def _check_partition_counts(producer: AIOKafkaProducer, expected: dict[str, int]) -> None:
        """A topic with fewer partitions than configured was created by someone else (auto-creation)."""
        for topic in producer.client.cluster.topics() & expected.keys():  # the topics this producer writes
            found = len(producer.client.cluster.partitions_for_topic(topic) or ())
            if found < expected[topic]:
                counts = {"topic": topic, "found": found, "expected": expected[topic]}
                log.error("topic has fewer partitions than configured", extra=counts)

    async def _start_offsets_reader(self) -> AIOKafkaConsumer:
        # No group: it only asks for end offsets, never fetches or commits.
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"{self.settings.service_name}-broker-watch",
            enable_auto_commit=False,
        )
        await reader.start()
        return reader

    @staticmethod
    async def _end_offsets(reader: AIOKafkaConsumer, relay: OutboxRelay) -> dict[tuple[str, int], int]:
        partitions = [TopicPartition(topic, partition) for topic, partition in relay.partition_ends]
        if not partitions:
            return {}
        ends = await asyncio.wait_for(reader.end_offsets(partitions), timeout=10.0)
        return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()}

    async def _announce_consumer(self, consumer: IdempotentConsumer) -> None:
        """Hold the presence lock while the consumer runs; reconnect if the database drops."""
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(asyncpg_dsn(self.settings.database_url))
                held = False
                while True:
                    if consumer.running != held:
                        verb = "pg_advisory_lock_shared" if consumer.running else "pg_advisory_unlock_shared"
                        await connection.execute(f"select {verb}($1)", CONSUMER_PRESENCE_LOCK)
                        held = not held
                    await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("consumer presence lost, reconnecting", extra={"error": repr(error)})
                await asyncio.sleep(2.0)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()

    async def _worker_consumer_running(self) -> bool:
        """For an API-only process: does a worker's consumer hold the presence lock in this database?"""
        try:
            async with self.engine.connect() as conn:
                held = await asyncio.wait_for(
                    conn.execute(
                        text(
                            "select exists(select 1 from pg_locks where locktype = 'advisory' and granted"
                            " and database = (select oid from pg_database where datname = current_database())"
                            " and classid = 0 and objid = :key and objsubid = 1)"
                        ),
                        {"key": CONSUMER_PRESENCE_LOCK},
                    ),
                    timeout=2.0,
                )
                return bool(held.scalar())
        except Exception:
            log.warning("readiness: consumer presence unknown", exc_info=True)
            return False

    async def _kafka_reachable(self) -> bool:
        if self.producer is None or not self.producer_ready:
            return False
        client = self.producer.client
        for broker in client.cluster.brokers():
            with contextlib.suppress(Exception):
                if await asyncio.wait_for(client.ready(broker.nodeId), timeout=2.0):
                    return True
        return False

    async def readiness(self) -> dict[str, bool]:
        checks = {"database": False, "kafka": await self._kafka_reachable(), "consumers": True}
        try:
            async with self.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("select 1")), timeout=2.0)
            checks["database"] = True
        except Exception:
            log.warning("readiness: database unreachable", exc_info=True)
        if self.consumer is not None:
            checks["consumers"] = self.consumer.running
        elif self.settings.consumers_enabled:  # API-only: a worker process runs the consumer
            checks["consumers"] = await self._worker_consumer_running()
        return checks


def settle_heap(gen0_threshold: int | None = None) -> None:
    """Move everything alive after start-up out of the collector's way; optionally collect young
    objects less often.

    Without it a full collection walks every object the imports made (SciPy and scikit-learn in
    segments) each time: in one bench run the collector held segments' worker for 72 s and
    loyalty's for 32 s (wall time, the machine loaded), against their 27 s and 14 s of CPU in
    the measured step.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold is not None:
        gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


def run_worker(runtime: ServiceRuntime) -> None:
    """Run a service's background work without its HTTP API, until SIGINT or SIGTERM."""
    import signal

    from shared.logs import configure_logging

    if runtime.settings.api_only:
        raise SystemExit("CX_API_ONLY is set, but a worker is what runs the consumer, relay and jobs: unset it")
    configure_logging(runtime.settings.service_name, runtime.settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await runtime.start()
        settle_heap(runtime.settings.worker_gc_gen0_threshold)
        try:
            await stop.wait()
        finally:
            await runtime.stop()

    asyncio.run(main())
