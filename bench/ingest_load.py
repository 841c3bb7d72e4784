"""Load generator for a running ingest: `/v1/batch` or single `/v1/purchases`, events/s with p50/p99.

    python bench/ingest_load.py --url http://127.0.0.1:18001 --key "$KEY" --mode batch --requests 200
    python bench/ingest_load.py --url http://127.0.0.1:18001 --key "$KEY" --mode single --requests 20000

Standalone (httpx only). Loopback addresses only; bounded by --requests and --seconds. Bodies are
built before the clock starts, every event with a fresh event_id, so the figure is the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import httpx
import orjson

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
KINDS = ("purchase", "interaction", "identify")


def event(kind: str, run: str, n: int) -> dict[str, Any]:
    at = datetime.now(UTC).isoformat()
    customer = f"load-cus-{n % 50_000}"
    if kind == "interaction":
        return {"event_id": f"{run}-{n}", "customer_id": customer, "occurred_at": at, "type": "product_view",
                "channel": "web", "properties": {"sku": f"SKU-{n % 997}", "category": f"cat-{n % 13}"}}  # fmt: skip
    if kind == "identify":
        return {"event_id": f"{run}-{n}", "customer_id": customer, "occurred_at": at,
                "traits": {"city": "Lyon", "country": "FR", "marketing_consent": n % 2 == 0}}  # fmt: skip
    price = f"{(n % 5000) / 100 + 1:.2f}"
    item = {"sku": f"SKU-{n % 997}", "category": f"cat-{n % 13}", "quantity": 1, "unit_price": price}
    return {"event_id": f"{run}-{n}", "order_id": f"{run}-o{n}", "customer_id": customer, "occurred_at": at,
            "currency": "USD", "channel": "web", "total": price, "items": [item]}  # fmt: skip


def bodies(mode: str, requests: int, batch_size: int, kinds: list[str]) -> list[tuple[str, bytes, int]]:
    """(path, body, events) per request, built up front."""
    run = f"load-{uuid.uuid4().hex[:8]}"
    if mode == "single":
        return [("/v1/purchases", orjson.dumps(event("purchase", run, i)), 1) for i in range(requests)]
    built = []
    for r in range(requests):
        batch = [{"kind": kinds[j % len(kinds)], **event(kinds[j % len(kinds)], run, r * batch_size + j)}
                 for j in range(batch_size)]  # fmt: skip
        built.append(("/v1/batch", orjson.dumps({"events": batch}), batch_size))
    return built


async def drive(
    url: str, key: str, work: list[tuple[str, bytes, int]], concurrency: int, seconds: float
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    accepted = 0
    queue = iter(work)
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        for path, body, _ in queue:
            if time.perf_counter() > deadline:
                return
            sent = time.perf_counter()
            try:
                answer = await client.post(path, content=body, headers=headers)
                status = answer.status_code
            except httpx.HTTPError:
                status = 599
            latencies.append((time.perf_counter() - sent) * 1000)
            statuses[status] += 1
            if status in (200, 202):
                accepted += answer.json().get("accepted", 1) if path == "/v1/batch" else 1

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "events_accepted": accepted,
        "seconds": round(elapsed, 3),
        "events_per_second": round(accepted / elapsed, 1),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49], 2),
        "p99_ms": round(quantiles[98], 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="ingest base URL on loopback, e.g. http://127.0.0.1:18001")
    parser.add_argument("--key", required=True, help="API key with ingest:write")
    parser.add_argument("--mode", choices=["batch", "single"], default="batch")
    parser.add_argument("--requests", type=int, default=100, help="requests to send (bounded)")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long whatever is left")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kinds", default="purchase", help=f"comma-separated, from {','.join(KINDS)}")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args()
    host = urlparse(args.url).hostname or ""
    if host not in LOOPBACK:
        sys.exit(f"refusing to load {host!r}: loopback addresses only")
    kinds = [k for k in args.kinds.split(",") if k in KINDS] or ["purchase"]
    work = bodies(args.mode, min(args.requests, 1_000_000), min(args.batch_size, 1000), kinds)
    result = asyncio.run(drive(args.url, args.key, work, args.concurrency, args.seconds))
    result |= {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size if args.mode == "batch" else 1,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.mode}: {result['events_per_second']:.0f} events/s ({result['requests_per_second']:.0f} requests/s), "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['events_accepted']} events in "
        f"{result['seconds']} s, statuses {result['statuses']}"
    )


if __name__ == "__main__":
    main()
