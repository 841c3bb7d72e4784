"""Profiles alone, measured: consumer events/s and GET /v1/customers/{id} latency.

`python -m profiles.bench` (from the repository root) starts an embedded PostgreSQL and broker on
free ports, produces purchases and interactions (envelopes shaped as ingest makes them) straight
onto the topics, runs `python -m profiles.worker` and times how fast it applies them and publishes
the changed profiles; then runs the API alone and loads GET with the raw-socket client of
bench/loadgen.py (32 keep-alive connections). Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
from aiokafka import AIOKafkaProducer

from bench.alone import cpu_seconds, enable_statement_stats, postgres_cpu, start, statement_stats, stop
from bench.loadgen import run_load
from shared.devstack import EmbeddedBroker, EmbeddedPostgres, free_port
from shared.migrate import upgrade
from shared.topics import INTERACTIONS, LOYALTY_ACCOUNTS, PURCHASES, create_all

API_KEY = "cx_bench_" + uuid.uuid4().hex + uuid.uuid4().hex


def envelope(type: str, key: str, data: dict[str, Any], at: datetime) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "cx.ingest",
            "type": type,
            "time": at,
            "subject": key,
            "datacontenttype": "application/json",
            "data": data,
        }
    )


def make_events(count: int, customers: int, seed: int = 7) -> list[tuple[str, str, bytes]]:
    """Half purchases, half interactions, over `customers` customers: (topic, key, value)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out: list[tuple[str, str, bytes]] = []
    for n in range(count):
        customer = f"cus-bench-{rng.randrange(customers):06d}"
        at = now - timedelta(minutes=rng.randrange(60 * 24 * 60))
        if n % 2 == 0:
            sku = f"SKU-{rng.randrange(200)}"
            data = {
                "event_id": f"evt-{uuid.uuid4().hex}",
                "order_id": f"ord-{uuid.uuid4().hex}",
                "customer_id": customer,
                "occurred_at": at,
                "currency": "USD",
                "channel": rng.choice(["web", "app", "store"]),
                "store_id": None,
                "items": [
                    {
                        "sku": sku,
                        "name": f"Product {sku}",
                        "category": f"cat-{rng.randrange(12)}",
                        "quantity": 1,
                        "unit_price": "12.50",
                    },
                    {"sku": "SKU-BAG", "name": "Bag", "category": "misc", "quantity": 2, "unit_price": "0.50"},
                ],
                "total": "13.50",
            }
            out.append((PURCHASES, customer, envelope("purchase.completed", customer, data, at)))
        else:
            data = {
                "event_id": f"evt-{uuid.uuid4().hex}",
                "customer_id": customer,
                "anonymous_id": None,
                "occurred_at": at,
                "type": rng.choice(["product_view", "page_view", "add_to_cart", "search"]),
                "channel": rng.choice(["web", "app"]),
                "properties": {"sku": f"SKU-{rng.randrange(200)}", "category": f"cat-{rng.randrange(12)}"},
            }
            out.append((INTERACTIONS, customer, envelope("interaction.recorded", customer, data, at)))
    return out


def make_platform_events(count: int, customers: int) -> list[tuple[str, str, bytes]]:
    """What `make bench`'s ingest_batch step makes profiles consume: purchases shaped as bench/run.py
    sends them (one line, SKU-n % 97, cat-n % 7, 25.00) over `customers` customers, each followed by
    loyalty's points.earned for it (a growing balance and ledger entry id per customer)."""
    now = datetime.now(UTC)
    out: list[tuple[str, str, bytes]] = []
    balances: dict[str, int] = {}
    for n in range(count // 2):
        customer = f"cus-batch-{n % customers}"
        at = now + timedelta(microseconds=n)
        data: dict[str, Any] = {
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
        out.append((PURCHASES, customer, envelope("purchase.completed", customer, data, at)))
        balances[customer] = balances.get(customer, 0) + 25
        points = {
            "customer_id": customer,
            "points": 25,
            "balance": balances[customer],
            "cause_type": "purchase",
            "cause_id": data["order_id"],
            "entry_id": n + 1,
            "occurred_at": at,
        }
        out.append((LOYALTY_ACCOUNTS, customer, envelope("points.earned", customer, points, at)))
    return out


def make_backlog_events(count: int, customers: int) -> list[tuple[str, str, bytes]]:
    """What `make bench`'s consumer_backlog step puts on ingest's topic: purchases only, one line each,
    customer n % `customers` (so mostly one purchase per customer at its default 20,000)."""
    now = datetime.now(UTC)
    out: list[tuple[str, str, bytes]] = []
    for n in range(count):
        customer = f"bl-bench-{n % customers}"
        data: dict[str, Any] = {
            "event_id": f"bench-{uuid.uuid4().hex}",
            "order_id": f"bench-ord-{uuid.uuid4().hex}",
            "customer_id": customer,
            "occurred_at": now,
            "currency": "USD",
            "channel": "web",
            "store_id": None,
            "items": [{"sku": f"SKU-{n % 97}", "name": None, "category": f"cat-{n % 7}", "quantity": 1,
                       "unit_price": "25.00"}],
            "total": "25.00",
        }  # fmt: skip
        out.append((PURCHASES, customer, envelope("purchase.completed", customer, data, now)))
    return out


def api_cpu(apis: list[subprocess.Popen[bytes]]) -> float:
    return sum(cpu_seconds(psutil.Process(api.pid)) for api in apis)


async def produce(bootstrap: str, events: list[tuple[str, str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key.encode()) for topic, key, value in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def first_commit(dsn: str, cpu_now: Any) -> tuple[int, tuple[float, float]]:
    """Wait for the consumer's first commit; (messages processed then, CPU then)."""
    conn = await asyncpg.connect(dsn)
    try:
        while not await conn.fetchval("select exists (select from processed_messages)"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        done = await conn.fetchval("select count(*) from processed_messages where consumer = 'profiles'")
        return int(done), cpu_now()
    finally:
        await conn.close()


async def consumer_rate(dsn: str, expected: int, timeout: float) -> dict[str, Any]:
    """Wait until `expected` messages are processed and no profile is dirty; rates from processed_at."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = await conn.fetchval("select count(*) from processed_messages where consumer = 'profiles'")
            if done >= expected and not await conn.fetchval("select exists (select from customers where dirty)"):
                break
            await asyncio.sleep(1.0)
        first, last, done = await conn.fetchrow(
            "select min(processed_at), max(processed_at), count(*) from processed_messages where consumer = 'profiles'"
        )
        busiest = await conn.fetch(
            "select date_trunc('second', processed_at) as s, count(*) as n from processed_messages"
            " where consumer = 'profiles' group by 1 order by 2 desc limit 10"
        )
        published = await conn.fetchval("select count(*) from outbox where topic = 'profiles.profiles.v1'")
        last_publish = await conn.fetchval("select max(created_at) from outbox where topic = 'profiles.profiles.v1'")
        span = (last - first).total_seconds() if first and last else 0.0
        return {
            "processed": done,
            "seconds_first_to_last": round(span, 2),
            "events_per_second": round(done / span, 1) if span else None,
            "busiest_10s_mean_per_second": round(sum(r["n"] for r in busiest) / max(1, len(busiest)), 1),
            "profile_updated_rows": published,
            "publish_lag_after_last_event_s": round((last_publish - last).total_seconds(), 2)
            if last_publish and last
            else None,
        }
    finally:
        await conn.close()


async def get_latency(base: str, ids: list[str], requests: int, rate: float) -> dict[str, Any]:
    port = base.rsplit(":", 1)[1]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    warm = await run_load(
        f"http://127.0.0.1:{port}",
        lambda i: ("GET", f"/v1/customers/{ids[i % len(ids)]}", b""),
        total=500,
        connections=32,
        headers=headers,
    )
    assert warm.statuses.get(200) == warm.requests, warm.statuses
    result = await run_load(
        f"http://127.0.0.1:{port}",
        lambda i: ("GET", f"/v1/customers/{ids[(i * 7919) % len(ids)]}", b""),
        total=requests,
        connections=32,
        headers=headers,
        max_seconds=120,
    )
    steady = await run_load(
        f"http://127.0.0.1:{port}",
        lambda i: ("GET", f"/v1/customers/{ids[(i * 104729) % len(ids)]}", b""),
        total=int(rate * 20),
        connections=32,
        headers=headers,
        max_seconds=60,
        rate_per_second=rate,
    )
    return {"closed_loop_32": result.summary(), f"open_loop_{rate:.0f}_per_s": steady.summary()}


async def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("service exited")
            try:
                if (await client.get(f"{base}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("service not ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--code", help="run the worker and API from this copy of services/profiles (a before/after)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one consumer group)")
    parser.add_argument("--api-processes", type=int, default=1, help="API processes sharing the port")
    parser.add_argument("--rate", type=float, default=200.0, help="GET requests/s of the open-loop run")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--profile", help="record the worker with py-spy into this file (raw stacks)")
    parser.add_argument("--skip-get", action="store_true")
    parser.add_argument(
        "--shape", choices=["mixed", "platform", "backlog"], default="mixed",
        help="mixed: purchases (2 lines) and interactions; platform: purchases as make bench sends them"
        " and their points.earned; backlog: purchases only, as make bench's consumer_backlog step",
    )  # fmt: skip
    parser.add_argument("--statements", action="store_true", help="report pg_stat_statements of the consumer run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profiles-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pg", free_port())
        broker = EmbeddedBroker(free_port(), log_path=Path(tmp) / "broker.log")
        postgres.start()
        broker.start()
        try:
            postgres.ensure_databases(["profiles"])
            url = postgres.url("profiles")
            upgrade("profiles", url)
            asyncio.run(create_all(broker.bootstrap))
            if args.statements:
                asyncio.run(enable_statement_stats(postgres, "profiles"))
            env = {
                "PROFILES_DATABASE_URL": url,
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "CX_DEV_API_KEY": API_KEY,
                "CX_LOG_LEVEL": "WARNING",
            }
            if args.code:
                env["PYTHONPATH"] = args.code
            if args.shape == "platform":
                events = make_platform_events(args.events, args.customers)
            elif args.shape == "backlog":
                events = make_backlog_events(args.events, args.customers)
            else:
                events = make_events(args.events, args.customers)
            asyncio.run(produce(broker.bootstrap, events))
            workers = [
                start("profiles.worker", env, Path(tmp) / f"worker-{n}.log", args.profile if n == 0 else None)
                for n in range(args.workers)
            ]
            try:

                def cpu_now() -> tuple[float, float]:
                    return sum(cpu_seconds(psutil.Process(w.pid)) for w in workers), postgres_cpu(postgres)

                # CPU from the first commit on (the worker's start-up is not the consumer's cost).
                first_done, (worker_before, postgres_before) = asyncio.run(
                    first_commit(postgres.dsn("profiles"), cpu_now)
                )
                consumer = asyncio.run(consumer_rate(postgres.dsn("profiles"), len(events), timeout=600))
                worker_after, postgres_after = cpu_now()
                applied = consumer["processed"] - first_done
                consumer["cpu_ms_per_1000_events"] = {
                    "worker": round((worker_after - worker_before) * 1e6 / max(1, applied), 1),
                    "postgres": round((postgres_after - postgres_before) * 1e6 / max(1, applied), 1),
                }
                if args.statements:
                    consumer["statements"] = asyncio.run(statement_stats(postgres.dsn("profiles")))
                result: dict[str, Any] = {"consumer": consumer}
                if not args.skip_get:  # the API process alone serves; the worker, caught up, stays idle
                    port = free_port()
                    api_env = env | {
                        "PROFILES_PORT": str(port),
                        "CX_API_ONLY": "true",
                        "PROFILES_API_PROCESSES": str(args.api_processes),
                    }
                    apis = [
                        start("profiles.main", api_env, Path(tmp) / f"api-{n}.log") for n in range(args.api_processes)
                    ]
                    base = f"http://127.0.0.1:{port}"
                    try:
                        for api in apis:
                            asyncio.run(wait_ready(base, api))
                        ids = sorted({key for _, key, _ in events})
                        api_before, postgres_before = api_cpu(apis), postgres_cpu(postgres)
                        result["get_customer"] = asyncio.run(get_latency(base, ids, args.requests, args.rate))
                        served = sum(part["requests"] for part in result["get_customer"].values()) + 500  # + warm-up
                        result["get_customer"]["cpu_us_per_request"] = {
                            "api": round((api_cpu(apis) - api_before) * 1e6 / served),
                            "postgres": round((postgres_cpu(postgres) - postgres_before) * 1e6 / served),
                        }
                        result["get_customer"]["api_processes"] = args.api_processes
                    finally:
                        for api in apis:
                            stop(api)
            finally:
                for worker in workers:
                    stop(worker)
            result["consumer"]["workers"] = args.workers
            print(json.dumps(result, indent=2))
            if args.keep_logs:
                for name in ("worker-0.log", "api-0.log"):
                    print(name, (Path(tmp) / name).read_text()[-3000:])
            server_log = postgres.log_path.read_text(errors="replace").splitlines()
            for n, line in enumerate(server_log):  # with the statements involved, which the worker's log lacks
                if "deadlock detected" in line:
                    print("\n".join(server_log[n : n + 30]), file=sys.stderr)
        finally:
            broker.stop()
            postgres.stop()


if __name__ == "__main__":
    main()
