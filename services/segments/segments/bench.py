"""Segments alone, measured: profile.updated -> segment.entered latency at a fixed rate, and CPU per event.

`python -m segments.bench` (from the repository root) starts an embedded PostgreSQL and broker on
free ports, applies segments' migrations, saves the rule segment bench-buyers (profile.orders >= 1)
and runs `python -m segments.worker` (consumer and relay). It then produces, open loop at `--rate`
new customers a second, each one's purchase.completed (shaped as ingest publishes it) and, 20-50 ms
later, their first profile.updated (shaped as profiles publishes it: portrait.profile_updated_message).
With `--bursts` the profiles are held back and sent every 0.5 s all at once, as profiles' publisher
runs. Each customer enters bench-buyers on that profile; the latency is the broker time of their
profile.updated record to that of their segment.entered record (as bench/run.py's
profile_to_membership measures it through the whole platform). CPU is read from /proc (psutil) for
the worker and every PostgreSQL process, from the first event to the last entered record.
Prints one JSON object. Loopback only; bounded in count and time (~45 s at the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.alone import cpu_seconds, enable_statement_stats, postgres_cpu, start, statement_stats, stop
from shared.devstack import EmbeddedBroker, EmbeddedPostgres, free_port
from shared.migrate import upgrade
from shared.topics import PROFILES, PURCHASES, SEGMENT_MEMBERSHIP, create_all

SEGMENT_KEY = "bench-buyers"
RULE = {"field": "profile.orders", "op": "gte", "value": 1}
BURST_SECONDS = 0.5


def purchase_message(customer: str, n: int, at: datetime) -> bytes:
    """purchase.completed as ingest publishes it."""
    data = {
        "event_id": f"bench-{uuid.uuid4().hex}",
        "order_id": f"bench-ord-{uuid.uuid4().hex}",
        "customer_id": customer,
        "occurred_at": at,
        "currency": "USD",
        "channel": "web",
        "store_id": None,
        "items": [{"sku": f"SKU-{n % 97}", "name": None, "category": f"cat-{n % 7}", "quantity": 1,
                   "unit_price": "25.00"}],
        "total": "25.00",
    }  # fmt: skip
    return _envelope("cx.ingest", "purchase.completed", customer, at, orjson.dumps(data))


def profile_message(customer: str, n: int, at: datetime) -> bytes:
    """A first profile.updated as profiles publishes it after one purchase (portrait.profile_snapshot)."""
    stamp = at.isoformat().replace("+00:00", "Z")
    snapshot = {
        "lifecycle_stage": "new",
        "orders": 1,
        "net_revenue": "25.00",
        "currency": "USD",
        "average_order_value": "25.00",
        "first_purchase_at": stamp,
        "last_purchase_at": stamp,
        "average_days_between_orders": None,
        "refunds": 0,
        "top_categories": [f"cat-{n % 7}"],
        "preferred_channels": ["web"],
        "interaction_counts": {},
        "last_seen_at": stamp,
        "loyalty_tier": None,
        "loyalty_points": 0,
        "satisfaction": {
            "nps_last": None,
            "csat_avg": None,
            "rating_avg": None,
            "sentiment_avg": None,
            "complaints": 0,
            "feedback_count": 0,
        },
        "traits": {},
        "segments": [],
    }
    head = orjson.dumps({"customer_id": customer, "version": 1, "changed": sorted(snapshot), "occurred_at": at})
    data = head[:-1] + b',"profile":' + orjson.dumps(snapshot) + b"}"
    return _envelope("cx.profiles", "profile.updated", customer, at, data)


def _envelope(source: str, type: str, subject: str, at: datetime, data: bytes) -> bytes:
    header = orjson.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": source,
            "type": type,
            "time": at,
            "subject": subject,
            "datacontenttype": "application/json",
        }
    )
    return header[:-1] + b',"data":' + data + b"}"


async def add_rule_segment(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "insert into segments (id, key, name, kind, description, rule) values ($1, $2, $2, 'rule', '', $3::jsonb)",
            f"seg_{uuid.uuid4().hex[:20]}",
            SEGMENT_KEY,
            json.dumps(RULE),
        )
    finally:
        await conn.close()


async def reset_statement_stats(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("select pg_stat_statements_reset()")
    finally:
        await conn.close()


async def wait_for(dsn: str, query: str, expected: int, timeout: float) -> int:
    """Poll `query` (a count) until it reaches `expected` or `timeout` seconds pass; the last count."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            count = int(await conn.fetchval(query))
            if count >= expected:
                break
            await asyncio.sleep(0.2)
        return count
    finally:
        await conn.close()


ENTERED_PUBLISHED = (
    "select count(*) from outbox where topic = 'segments.membership.v1' and published_at is not null"
    " and key like 'sb-%' and payload like '%\"segment.entered\"%' and payload like '%\"bench-buyers\"%'"
)


async def database_now(dsn: str) -> datetime:
    conn = await asyncpg.connect(dsn)
    try:
        moment: datetime = await conn.fetchval("select clock_timestamp()")
        return moment
    finally:
        await conn.close()


async def consumer_batches(dsn: str, since: datetime) -> int:
    """Transactions of the consumer since `since` (processed_at is each transaction's now())."""
    conn = await asyncpg.connect(dsn)
    try:
        query = (
            "select count(distinct processed_at) from processed_messages"
            " where consumer = 'segments' and processed_at > $1"
        )
        return int(await conn.fetchval(query, since))
    finally:
        await conn.close()


async def warm_up(bootstrap: str, dsn: str) -> None:
    """One customer through the worker, so its consumer has joined and its statements are prepared."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for n in range(3):
            customer = f"warm-{n}"
            now = datetime.now(UTC)
            await producer.send_and_wait(PURCHASES, purchase_message(customer, n, now), key=customer.encode())
            await producer.send_and_wait(PROFILES, profile_message(customer, n, now), key=customer.encode())
    finally:
        await producer.stop()
    query = "select count(*) from outbox where topic = 'segments.membership.v1' and published_at is not null"
    if await wait_for(dsn, query, 3, timeout=60) < 3:
        raise RuntimeError("the worker did not apply the warm-up events within 60 s")


async def produce(bootstrap: str, *, rate: float, seconds: float, bursts: bool, seed: int) -> int:
    """Open loop: customer n's purchase at start + n / rate, their profile 20-50 ms later (or in the next burst)."""
    rng = random.Random(seed)
    total = int(rate * seconds)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0)
    await producer.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: list[asyncio.Future[Any]] = []
    held: list[tuple[str, int]] = []
    timers: list[asyncio.TimerHandle] = []

    def send(topic: str, customer: str, value: bytes) -> None:
        pending.append(asyncio.ensure_future(producer.send_and_wait(topic, value, key=customer.encode())))

    def send_profile(customer: str, n: int) -> None:
        if bursts:
            held.append((customer, n))
        else:
            send(PROFILES, customer, profile_message(customer, n, datetime.now(UTC)))

    def flush_burst() -> None:
        now = datetime.now(UTC)
        for customer, n in held:
            send(PROFILES, customer, profile_message(customer, n, now))
        held.clear()

    try:
        next_burst = start + BURST_SECONDS
        for n in range(total):
            due = start + n / rate
            while bursts and next_burst <= due:
                await asyncio.sleep(max(0.0, next_burst - loop.time()))
                flush_burst()
                next_burst += BURST_SECONDS
            await asyncio.sleep(max(0.0, due - loop.time()))
            customer = f"sb-{n:07d}"
            send(PURCHASES, customer, purchase_message(customer, n, datetime.now(UTC)))
            delay = rng.uniform(0.020, 0.050)
            timers.append(loop.call_later(delay, send_profile, customer, n))
        await asyncio.sleep(0.06)
        if bursts:
            await asyncio.sleep(max(0.0, next_burst - loop.time()))
            flush_burst()
        await asyncio.gather(*pending)
    finally:
        for timer in timers:
            timer.cancel()
        await producer.stop()
    return total


async def stages(dsn: str, first_profile: dict[str, int], entered: dict[str, int]) -> dict[str, Any]:
    """Where the time went, from the retained outbox rows (times of transaction starts), as bench/run.py
    splits it: waiting = profile record -> the applying transaction began; applying = that -> the relay's
    transaction began; sending = that -> the entered record's broker time."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select key, extract(epoch from created_at) * 1000 as created, extract(epoch from published_at) * 1000"
            " as published from outbox where key like 'sb-%' and payload like '%\"segment.entered\"%'"
            " and payload like '%\"bench-buyers\"%' and published_at is not null"
        )
    finally:
        await conn.close()
    split: dict[str, list[float]] = {"waiting": [], "applying": [], "sending": []}
    for row in rows:
        customer = row["key"]
        if customer in first_profile and customer in entered:
            split["waiting"].append(float(row["created"]) - first_profile[customer])
            split["applying"].append(float(row["published"]) - float(row["created"]))
            split["sending"].append(entered[customer] - float(row["published"]))
    return {
        name: {"p50_ms": round(float(np.percentile(v, 50)), 1), "p99_ms": round(float(np.percentile(v, 99)), 1)}
        for name, v in split.items()
        if v
    }


async def latencies(bootstrap: str, dsn: str) -> dict[str, Any]:
    """First profile.updated record time -> segment.entered (bench-buyers) record time, per customer."""
    consumer = AIOKafkaConsumer(
        PROFILES, SEGMENT_MEMBERSHIP, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    first_profile: dict[str, int] = {}
    entered: dict[str, int] = {}
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 2:
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for records in batch.values():
                idle_since = time.monotonic()
                for record in records:
                    event = orjson.loads(record.value)
                    subject = str(event.get("subject", ""))
                    if not subject.startswith("sb-"):
                        continue
                    if event["type"] == "profile.updated":
                        first_profile[subject] = min(first_profile.get(subject, record.timestamp), record.timestamp)
                    elif event["type"] == "segment.entered" and event["data"].get("segment_key") == SEGMENT_KEY:
                        entered[subject] = record.timestamp
    finally:
        await consumer.stop()
    gaps = [float(entered[c] - first_profile[c]) for c in entered if c in first_profile]

    def percentile(q: float) -> float | None:
        return round(float(np.percentile(gaps, q)), 1) if gaps else None

    return {
        "customers": len(first_profile),
        "entered": len(gaps),
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "p99_ms": percentile(99),
        "max_ms": round(max(gaps), 1) if gaps else None,
        "stages": await stages(dsn, first_profile, entered),
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    postgres = EmbeddedPostgres(tmp / "pg", free_port())
    broker = EmbeddedBroker(free_port(), log_path=tmp / "broker.log")
    postgres.start()
    broker.start()
    try:
        postgres.ensure_databases(["segments"])
        url = postgres.url("segments")
        dsn = postgres.dsn("segments")
        upgrade("segments", url)
        asyncio.run(create_all(broker.bootstrap))
        if args.statements:
            asyncio.run(enable_statement_stats(postgres, "segments"))
        asyncio.run(add_rule_segment(dsn))
        env = {
            "SEGMENTS_DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "SEGMENTS_RECOMPUTE_INTERVAL_SECONDS": "0",
            "CX_CONSUMER_FETCH_MAX_WAIT_MS": str(args.fetch_wait_ms),
            "CX_LOG_LEVEL": "WARNING",
        }
        if args.code:
            env["PYTHONPATH"] = args.code
        worker = start("segments.worker", env, tmp / "worker.log", args.profile)
        try:
            asyncio.run(warm_up(broker.bootstrap, dsn))
            if args.statements:
                asyncio.run(reset_statement_stats(dsn))
            process = psutil.Process(worker.pid)
            cpu: Callable[[], tuple[float, float]] = lambda: (cpu_seconds(process), postgres_cpu(postgres))  # noqa: E731
            since = asyncio.run(database_now(dsn))
            worker_before, postgres_before = cpu()
            began = time.monotonic()
            customers = asyncio.run(
                produce(broker.bootstrap, rate=args.rate, seconds=args.seconds, bursts=args.bursts, seed=args.seed)
            )
            done = asyncio.run(wait_for(dsn, ENTERED_PUBLISHED, customers, timeout=60))
            batches = asyncio.run(consumer_batches(dsn, since))
            worker_after, postgres_after = cpu()
            wall = time.monotonic() - began
            if worker.poll() is not None:
                raise RuntimeError("the worker exited: " + (tmp / "worker.log").read_text()[-2000:])
        finally:
            stop(worker)
        events = 2 * customers  # a purchase and a profile each
        result: dict[str, Any] = {
            "rate_per_second": args.rate,
            "seconds": args.seconds,
            "profiles": "bursts every 0.5 s" if args.bursts else "each 20-50 ms after its purchase",
            "fetch_wait_ms": args.fetch_wait_ms,
            "events": events,
            "published_entered": done,
            "consumer_batches": batches,
            "events_per_batch": round(events / max(1, batches), 1),
            "profile_to_membership": asyncio.run(latencies(broker.bootstrap, dsn)),
            "cpu_us_per_event": {
                "worker": round((worker_after - worker_before) * 1e6 / events),
                "postgres": round((postgres_after - postgres_before) * 1e6 / events),
            },
            "cpu_percent_of_a_core": {
                "worker": round((worker_after - worker_before) * 100 / wall, 1),
                "postgres": round((postgres_after - postgres_before) * 100 / wall, 1),
            },
        }
        if args.statements:
            result["statements"] = asyncio.run(statement_stats(dsn))
        if args.keep_logs:
            result["worker_log"] = (tmp / "worker.log").read_text()[-3000:]
        return result
    finally:
        broker.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="new customers (purchase + profile) per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to produce")
    parser.add_argument("--bursts", action="store_true", help="profiles every 0.5 s at once, as profiles publishes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=20,
        help="the worker's CX_CONSUMER_FETCH_MAX_WAIT_MS (make up gives segments 20)",
    )
    parser.add_argument("--code", help="run the worker from this copy of services/segments (a before/after)")
    parser.add_argument("--profile", help="record the worker with py-spy into this file (raw stacks)")
    parser.add_argument("--statements", action="store_true", help="report pg_stat_statements of the measured run")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segments-bench-") as tmp:
        print(json.dumps(run(args, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
