"""Bulk synthetic customers written straight into segments' database, for benchmarks and demos.

`python -m segments.synthetic --customers 1000000 [--recompute]` fills the database named by
SEGMENTS_DATABASE_URL in a few set-based statements (no events, no per-customer round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from segments.config import SegmentsSettings
from segments.recompute import recompute_all
from shared.db import make_engine, make_sessionmaker

_CUSTOMERS = """
INSERT INTO customers (customer_id)
SELECT CAST(:prefix AS text) || '-' || g FROM generate_series(CAST(:first AS int), CAST(:last AS int)) g
ON CONFLICT DO NOTHING
"""
# Each customer: a first purchase within `days`, a geometric number of further orders spread up to a
# personal stop time (so some have lapsed), a personal basket size.
_ORDERS = """
INSERT INTO orders (order_id, customer_id, occurred_at, amount, currency)
SELECT CAST(:prefix AS text) || '-o-' || c.g || '-' || k, CAST(:prefix AS text) || '-' || c.g,
       CASE WHEN k = 1 THEN c.first_at ELSE c.first_at + random() * c.span END,
       round((c.basket * (0.5 + random()))::numeric, 2), 'USD'
FROM (
    SELECT g, first_at, basket, n_orders, (CAST(:as_of AS timestamptz) - first_at) * power(random(), 0.5) AS span
    FROM (
        SELECT g, CAST(:as_of AS timestamptz) - random() * make_interval(days => CAST(:days AS int)) AS first_at,
               5 + random() * 150 AS basket, 1 + floor(-ln(1 - random()) * 2.0)::int AS n_orders
        FROM generate_series(CAST(:first AS int), CAST(:last AS int)) g
    ) drawn
) c
CROSS JOIN LATERAL generate_series(1, c.n_orders) k
ON CONFLICT DO NOTHING
"""
_PROFILES = """
INSERT INTO customer_profiles (customer_id, version, profile, occurred_at)
SELECT CAST(:prefix AS text) || '-' || g, 1, jsonb_build_object(
    'lifecycle_stage', (ARRAY['new', 'active', 'repeat', 'loyal', 'at_risk', 'churned'])[1 + floor(random() * 6)::int],
    'loyalty_tier', (ARRAY['bronze', 'silver', 'gold'])[1 + floor(random() * 3)::int],
    'loyalty_points', floor(random() * 5000)::int,
    'top_categories', jsonb_build_array((ARRAY['kitchen', 'garden', 'toys', 'books'])[1 + floor(random() * 4)::int]),
    'interaction_counts', jsonb_build_object('page_view', floor(random() * 100)::int),
    'traits', jsonb_build_object(
        'country', (ARRAY['US', 'DE', 'FR', 'GB', 'NL'])[1 + floor(random() * 5)::int],
        'marketing_consent', random() < 0.6)),
    CAST(:as_of AS timestamptz)
FROM generate_series(CAST(:first AS int), CAST(:last AS int)) g
ON CONFLICT DO NOTHING
"""


async def generate_synthetic_customers(
    session: AsyncSession,
    *,
    customers: int,
    first: int = 1,
    prefix: str = "syn",
    as_of: datetime | None = None,
    days: int = 730,
    seed: float = 0.42,
    profiles: bool = True,
) -> int:
    """Customers `prefix-first` .. `prefix-(first+customers-1)` with orders (and profiles); returns orders written."""
    params = {
        "prefix": prefix,
        "first": first,
        "last": first + customers - 1,
        "as_of": as_of or datetime.now(UTC),
        "days": days,
    }
    await session.execute(text("SELECT setseed(:seed)"), {"seed": seed})
    await session.execute(text(_CUSTOMERS), params)
    orders = getattr(await session.execute(text(_ORDERS), params), "rowcount", 0)
    if profiles:
        await session.execute(text(_PROFILES), params)
    return int(orders or 0)


async def _main(customers: int, recompute: bool) -> None:
    settings = SegmentsSettings()
    engine = make_engine(settings.database_url)
    started = time.perf_counter()
    async with make_sessionmaker(engine)() as session, session.begin():
        orders = await generate_synthetic_customers(session, customers=customers)
    print(f"{customers} customers, {orders} orders in {time.perf_counter() - started:.1f}s")
    if recompute:
        started = time.perf_counter()
        async with make_sessionmaker(engine)() as session, session.begin():
            summary = await recompute_all(session, settings=settings)
        print(f"full recompute in {time.perf_counter() - started:.1f}s: {summary.seconds}")
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write synthetic customers into the segments database.")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--recompute", action="store_true", help="run a full recompute afterwards and time it")
    arguments = parser.parse_args()
    asyncio.run(_main(arguments.customers, arguments.recompute))
