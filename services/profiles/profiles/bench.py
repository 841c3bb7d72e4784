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
import os
import random
import signal
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
from aiokafka import AIOKafkaProducer

from bench.loadgen import run_load
from shared.devstack import EmbeddedBroker, EmbeddedPostgres, free_port
from shared.migrate import upgrade
from shared.topics import INTERACTIONS, PURCHASES, create_all

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


async def produce(bootstrap: str, events: list[tuple[str, str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key.encode()) for topic, key, value in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def start(module: str, env: dict[str, str], log: Path, profile: str | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", module]
    if profile:  # py-spy's raw (collapsed) stacks, for a flame graph or grep
        command = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw", "-o", profile,
                   "--", *command]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(command, env=os.environ | env, stdout=out, stderr=out)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)  # the worker stops cleanly on it, and py-spy writes its profile
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


async def consumer_rate(dsn: str, expected: int, timeout: float) -> dict[str, Any]:
    """Wait until `expected` messages are processed and no profile is dirty; rates from processed_at."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = await conn.fetchval("select count(*) from processed_messages where consumer = 'profiles'")
            dirty = await conn.fetchval("select count(*) from customers where dirty")
            if done >= expected and dirty == 0:
                break
            await asyncio.sleep(0.5)
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
            env = {
                "PROFILES_DATABASE_URL": url,
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "CX_DEV_API_KEY": API_KEY,
                "CX_LOG_LEVEL": "WARNING",
            }
            if args.code:
                env["PYTHONPATH"] = args.code
            events = make_events(args.events, args.customers)
            asyncio.run(produce(broker.bootstrap, events))
            workers = [
                start("profiles.worker", env, Path(tmp) / f"worker-{n}.log", args.profile if n == 0 else None)
                for n in range(args.workers)
            ]
            try:
                consumer = asyncio.run(consumer_rate(postgres.dsn("profiles"), args.events, timeout=600))
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
                        result["get_customer"] = asyncio.run(get_latency(base, ids, args.requests, args.rate))
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
        finally:
            broker.stop()
            postgres.stop()


if __name__ == "__main__":
    main()
