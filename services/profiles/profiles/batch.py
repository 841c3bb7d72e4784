"""Set-based handlers: every new event of one type in a fetched batch, in a few SQL statements.

The consumer hands each handler all the events of its type from one fetched batch (one
transaction). Each handler validates them, records the facts under their natural ids in one
`insert ... select from unnest(...) on conflict do nothing returning`, and folds only the facts
inserted now into the aggregates with one `insert ... on conflict do update` per table. Every
aggregate is a sum, a min/max, or "latest by a total order" (see service.py), computed the same
way in Python within the batch and in SQL against the stored row, so the result is the same for
any batching and any arrival order. Rows are written in key order, so two transactions touching
the same customers lock them in the same order.

Statements go straight to the asyncpg connection of the session's transaction (no ORM): the
SQLAlchemy layer costs more CPU per statement than PostgreSQL spends running it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import orjson
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from profiles import sql
from profiles.events import (
    CustomerIdentified,
    FeedbackSubmitted,
    InteractionRecorded,
    Points,
    PurchaseRefunded,
    SegmentMembershipChanged,
    TierChanged,
    parse_points,
    parse_purchase,
)
from profiles.service import NOT_INTEREST, customer_key, interaction_property, not_erased_memo
from shared.consumer import BatchHandlerMap
from shared.db import transaction_connection
from shared.envelope import Envelope

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _parse(model: type[M], events: Sequence[Envelope]) -> list[M]:
    return [model.model_validate(event.data) for event in events]


async def live_customers(session: AsyncSession, conn: asyncpg.Connection, customer_ids: Iterable[str]) -> set[str]:
    """The customers not erased (one query for those not yet known in this transaction)."""
    memo = not_erased_memo(session)
    wanted = set(customer_ids)
    unknown = {customer_key(c): c for c in wanted if c not in memo}
    if unknown:
        rows = await sql.fetch(
            conn, "select customer_key from erased_customers where customer_key = any($1::text[])", list(unknown)
        )
        erased = {unknown[row[0]] for row in rows}
        memo.update(c for c in unknown.values() if c not in erased)
    return {c for c in wanted if c in memo}


def _counts(counter: Mapping[str, int]) -> str:
    return orjson.dumps(dict(sorted(counter.items()))).decode()


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1  # plain dicts: a Counter per customer costs ~1 us to create


def _add_counts(column: str) -> str:
    """jsonb counters: stored || {key: stored[key] + new[key] for every new key}."""
    return (
        f"c.{column} || coalesce((select jsonb_object_agg(e.key, coalesce((c.{column} ->> e.key)::int, 0)"
        f" + e.value::int) from jsonb_each_text(excluded.{column}) e), '{{}}'::jsonb)"
    )


# The currency with the most orders (then alphabetical) is shown; amounts are never converted.
# Per customer through the primary key: `distinct on ... where customer_id = any($1)` got a generic
# plan that read all of customer_revenue on a young database (~0.5 s a batch of 2,000).
_PRIMARY_REVENUE = """
    select u.customer_id, r.currency, r.orders, r.gross, r.refunded
    from unnest($1::text[]) as u(customer_id)
    cross join lateral (
        select currency, orders, gross, refunded from customer_revenue
        where customer_id = u.customer_id order by orders desc, currency limit 1) r
"""
_REVENUE_COLUMNS = "currency, currency_orders, gross_revenue, refunded_amount, net_revenue"
_REVENUE_VALUES = "p.currency, p.orders, p.gross, p.refunded, p.gross - p.refunded"
_REVENUE_SET = """
    currency = excluded.currency, currency_orders = excluded.currency_orders,
    gross_revenue = excluded.gross_revenue, refunded_amount = excluded.refunded_amount,
    net_revenue = excluded.net_revenue
"""


async def _add_revenue(conn: asyncpg.Connection, totals: dict[tuple[str, str], list[Any]]) -> None:
    """totals[(customer, currency)] = [orders, gross, refunded, refunds]."""
    keys = sorted(totals)
    await sql.execute(
        conn,
        """
        insert into customer_revenue as r (customer_id, currency, orders, gross, refunded, refunds)
        select * from unnest($1::text[], $2::text[], $3::int[], $4::numeric[], $5::numeric[], $6::int[])
        order by 1, 2
        on conflict (customer_id, currency) do update set
            orders = r.orders + excluded.orders, gross = r.gross + excluded.gross,
            refunded = r.refunded + excluded.refunded, refunds = r.refunds + excluded.refunds
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [totals[k][0] for k in keys],
        [totals[k][1] for k in keys],
        [totals[k][2] for k in keys],
        [totals[k][3] for k in keys],
    )


async def _add_affinities(conn: asyncpg.Connection, rows: dict[tuple[str, str, str], list[int]]) -> None:
    """rows[(customer, kind, key)] = [units purchased, views]."""
    if not rows:
        return
    keys = sorted(rows)
    await sql.execute(
        conn,
        """
        insert into affinities as a (customer_id, kind, key, purchased, views)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[]) order by 1, 2, 3
        on conflict (customer_id, kind, key) do update set
            purchased = a.purchased + excluded.purchased, views = a.views + excluded.views
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [rows[k][0] for k in keys],
        [rows[k][1] for k in keys],
    )


async def _mark_dirty(conn: asyncpg.Connection, customer_ids: Iterable[str]) -> None:
    """Create missing profiles and mark these as changed."""
    ids = sorted(set(customer_ids))
    if ids:
        await sql.execute(
            conn,
            """
            insert into customers as c (customer_id) select * from unnest($1::text[]) order by 1
            on conflict (customer_id) do update set dirty = true, updated_at = now()
            """,
            ids,
        )


def _first_by(items: Iterable[T], key: Any) -> list[T]:
    """Drop repeats of a natural id within the batch (the first wins, as one by one)."""
    seen: dict[Any, T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


async def count_purchases(session: AsyncSession, events: Sequence[Envelope]) -> None:
    purchases = _first_by((parse_purchase(event.data) for event in events), lambda p: (p.customer_id, p.order_id))
    conn = await transaction_connection(session)
    live = await live_customers(session, conn, (p.customer_id for p in purchases))
    purchases = sorted((p for p in purchases if p.customer_id in live), key=lambda p: (p.customer_id, p.order_id))
    if not purchases:
        return
    inserted = await sql.fetch(
        conn,
        """
        insert into orders (customer_id, order_id, occurred_at, currency, channel, store_id, total)
        select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                             $7::numeric[]) order by 1, 2
        on conflict do nothing returning customer_id, order_id
        """,
        [p.customer_id for p in purchases],
        [p.order_id for p in purchases],
        [p.occurred_at for p in purchases],
        [p.currency for p in purchases],
        [p.channel for p in purchases],
        [p.store_id for p in purchases],
        [p.total for p in purchases],
    )
    new = {(row[0], row[1]) for row in inserted}
    purchases = [p for p in purchases if (p.customer_id, p.order_id) in new]  # others: counted before
    if not purchases:
        return
    lines = [(p, n, item) for p in purchases for n, item in enumerate(p.items)]
    await sql.execute(
        conn,
        """
        insert into order_lines (customer_id, order_id, line_no, sku, category, quantity, unit_price)
        select * from unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::int[], $7::numeric[])
        """,
        [p.customer_id for p, _, _ in lines],
        [p.order_id for p, _, _ in lines],
        [n for _, n, _ in lines],
        [item.sku for _, _, item in lines],
        [item.category for _, _, item in lines],
        [item.quantity for _, _, item in lines],
        [item.unit_price for _, _, item in lines],
    )
    products: dict[str, list[str | None]] = {}
    for p in sorted(purchases, key=lambda p: (p.occurred_at, p.order_id)):
        for item in p.items:
            known = products.setdefault(item.sku, [None, None])
            known[0] = item.name or known[0]
            known[1] = item.category or known[1]
    skus = sorted(products)
    await sql.execute(
        conn,
        """
        insert into products as p (sku, name, category)
        select * from unnest($1::text[], $2::text[], $3::text[]) order by 1
        on conflict (sku) do update set
            name = coalesce(excluded.name, p.name), category = coalesce(excluded.category, p.category)
        """,
        skus,
        [products[s][0] for s in skus],
        [products[s][1] for s in skus],
    )
    revenue: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0), Decimal(0), 0])
    per_customer: dict[str, list[Any]] = {}
    channels: dict[str, dict[str, int]] = defaultdict(dict)
    affinities: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for p in purchases:
        totals = revenue[p.customer_id, p.currency]
        totals[0] += 1
        totals[1] += p.total
        row = per_customer.setdefault(p.customer_id, [0, p.occurred_at, p.occurred_at])
        row[0] += 1
        row[1] = min(row[1], p.occurred_at)
        row[2] = max(row[2], p.occurred_at)
        _count(channels[p.customer_id], p.channel)
        for item in p.items:
            affinities[p.customer_id, "product", item.sku][0] += item.quantity
            if item.category:
                affinities[p.customer_id, "category", item.category][0] += item.quantity
    await _add_revenue(conn, revenue)
    ids = sorted(per_customer)
    await sql.execute(
        conn,
        f"""
        with p as ({_PRIMARY_REVENUE})
        insert into customers as c (customer_id, orders, first_purchase_at, last_purchase_at, order_channels,
                                    {_REVENUE_COLUMNS}, dirty, updated_at)
        select u.customer_id, u.orders, u.first_at, u.last_at, u.channels::jsonb, {_REVENUE_VALUES}, true, now()
        from unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[], $5::text[])
            as u(customer_id, orders, first_at, last_at, channels)
        join p on p.customer_id = u.customer_id
        order by u.customer_id
        on conflict (customer_id) do update set
            orders = c.orders + excluded.orders,
            first_purchase_at = least(c.first_purchase_at, excluded.first_purchase_at),
            last_purchase_at = greatest(c.last_purchase_at, excluded.last_purchase_at),
            order_channels = {_add_counts("order_channels")},
            {_REVENUE_SET}, dirty = true, updated_at = now()
        """,
        ids,
        [per_customer[c][0] for c in ids],
        [per_customer[c][1] for c in ids],
        [per_customer[c][2] for c in ids],
        [_counts(channels[c]) for c in ids],
    )
    await _add_affinities(conn, affinities)


async def deduct_refunds(session: AsyncSession, events: Sequence[Envelope]) -> None:
    refunds = _first_by(_parse(PurchaseRefunded, events), lambda r: r.refund_id)
    conn = await transaction_connection(session)
    live = await live_customers(session, conn, (r.customer_id for r in refunds))
    refunds = sorted((r for r in refunds if r.customer_id in live), key=lambda r: r.refund_id)
    if not refunds:
        return
    inserted = await sql.fetch(
        conn,
        """
        insert into refunds (refund_id, customer_id, order_id, occurred_at, currency, amount)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::numeric[])
        order by 1
        on conflict do nothing returning refund_id
        """,
        [r.refund_id for r in refunds],
        [r.customer_id for r in refunds],
        [r.order_id for r in refunds],
        [r.occurred_at for r in refunds],
        [r.currency for r in refunds],
        [r.amount for r in refunds],
    )
    new = {row[0] for row in inserted}
    refunds = [r for r in refunds if r.refund_id in new]
    if not refunds:
        return
    revenue: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0), Decimal(0), 0])
    counts: Counter[str] = Counter()
    for r in refunds:
        totals = revenue[r.customer_id, r.currency]
        totals[2] += r.amount
        totals[3] += 1 if r.amount else 0
        counts[r.customer_id] += 1
    await _add_revenue(conn, revenue)
    ids = sorted(counts)
    await sql.execute(
        conn,
        f"""
        with p as ({_PRIMARY_REVENUE})
        insert into customers as c (customer_id, refunds, {_REVENUE_COLUMNS}, dirty, updated_at)
        select u.customer_id, u.refunds, {_REVENUE_VALUES}, true, now()
        from unnest($1::text[], $2::int[]) as u(customer_id, refunds)
        join p on p.customer_id = u.customer_id
        order by u.customer_id
        on conflict (customer_id) do update set
            refunds = c.refunds + excluded.refunds, {_REVENUE_SET}, dirty = true, updated_at = now()
        """,
        ids,
        [counts[c] for c in ids],
    )


async def _lock_anonymous_ids(conn: asyncpg.Connection, anonymous_ids: Iterable[str]) -> dict[str, str]:
    """Serialise anonymous visitors' events with their identification; returns their known owners."""
    ids = sorted(set(anonymous_ids))
    if not ids:
        return {}
    await sql.execute(
        conn,
        "select pg_advisory_xact_lock(hashtextextended('profiles:anon:' || a, 0))"
        " from (select a from unnest($1::text[]) as a order by a) as sorted",
        ids,
    )
    rows = await sql.fetch(
        conn, "select anonymous_id, customer_id from identity_links where anonymous_id = any($1::text[])", ids
    )
    return {row[0]: row[1] for row in rows}


async def count_interactions(session: AsyncSession, events: Sequence[Envelope]) -> None:
    interactions = _first_by(_parse(InteractionRecorded, events), lambda i: i.event_id)
    conn = await transaction_connection(session)
    anonymous = [i.anonymous_id for i in interactions if i.customer_id is None and i.anonymous_id is not None]
    if any(i.customer_id is None and i.anonymous_id is None for i in interactions):
        raise ValueError("interaction has neither customer_id nor anonymous_id")
    owners = await _lock_anonymous_ids(conn, anonymous)
    resolved = [(i.customer_id or owners.get(i.anonymous_id or ""), i) for i in interactions]
    live = await live_customers(session, conn, (c for c, _ in resolved if c is not None))
    kept = sorted(((c, i) for c, i in resolved if c is None or c in live), key=lambda ci: ci[1].event_id)
    if not kept:
        return
    skus = [interaction_property(i.properties, "sku", 128) for _, i in kept]
    categories = [interaction_property(i.properties, "category", 200) for _, i in kept]
    inserted = await sql.fetch(
        conn,
        """
        insert into interactions (event_id, customer_id, anonymous_id, occurred_at, type, channel, sku, category)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                             $7::text[], $8::text[]) order by 1
        on conflict do nothing returning event_id
        """,
        [i.event_id for _, i in kept],
        [c for c, _ in kept],
        [i.anonymous_id for _, i in kept],
        [i.occurred_at for _, i in kept],
        [i.type for _, i in kept],
        [i.channel for _, i in kept],
        skus,
        categories,
    )
    new = {row[0] for row in inserted}
    facts = [
        (c, i.type, i.channel, sku, category, i.occurred_at)
        for (c, i), sku, category in zip(kept, skus, categories, strict=True)
        if c is not None and i.event_id in new
    ]
    await add_interaction_facts(conn, facts)


InteractionFactRow = tuple[str, str, str, str | None, str | None, datetime]  # customer, type, channel, sku, cat, at


async def add_interaction_facts(conn: asyncpg.Connection, facts: Sequence[InteractionFactRow]) -> None:
    """Fold newly attributed interactions into counts, channels, last seen and view affinities."""
    if not facts:
        return
    types: dict[str, dict[str, int]] = defaultdict(dict)
    channels: dict[str, dict[str, int]] = defaultdict(dict)
    seen: dict[str, datetime] = {}
    affinities: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for customer_id, type_, channel, sku, category, at in facts:
        _count(types[customer_id], type_)
        _count(channels[customer_id], channel)
        seen[customer_id] = max(seen.get(customer_id, at), at)
        if type_ in NOT_INTEREST:
            continue
        if sku:
            affinities[customer_id, "product", sku][1] += 1
        if category:
            affinities[customer_id, "category", category][1] += 1
    ids = sorted(seen)
    await sql.execute(
        conn,
        f"""
        insert into customers as c (customer_id, interaction_counts, interaction_channels, last_seen_at,
                                    dirty, updated_at)
        select u.customer_id, u.counts::jsonb, u.channels::jsonb, u.seen, true, now()
        from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) as u(customer_id, counts, channels, seen)
        order by u.customer_id
        on conflict (customer_id) do update set
            interaction_counts = {_add_counts("interaction_counts")},
            interaction_channels = {_add_counts("interaction_channels")},
            last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at), dirty = true, updated_at = now()
        """,
        ids,
        [_counts(types[c]) for c in ids],
        [_counts(channels[c]) for c in ids],
        [seen[c] for c in ids],
    )
    await _add_affinities(conn, affinities)


async def merge_identities(session: AsyncSession, events: Sequence[Envelope]) -> None:
    identified = _parse(CustomerIdentified, events)
    conn = await transaction_connection(session)
    live = await live_customers(session, conn, (i.customer_id for i in identified))
    identified = [i for i in identified if i.customer_id in live]
    if not identified:
        return
    await sql.execute(
        conn,
        "insert into customers (customer_id) select * from unnest($1::text[]) order by 1 on conflict do nothing",
        sorted({i.customer_id for i in identified}),
    )
    latest: dict[tuple[str, str], tuple[datetime, str, Any]] = {}
    for i in identified:
        for trait, value in i.traits.items():
            key = (i.customer_id, trait[:100])
            candidate = (i.occurred_at, i.event_id, value)
            if key not in latest or candidate[:2] > latest[key][:2]:
                latest[key] = candidate
    if latest:
        keys = sorted(latest)
        await sql.execute(
            conn,
            """
            insert into customer_traits as t (customer_id, trait, value, observed_at, event_id)
            select u.customer_id, u.trait, u.value::jsonb, u.observed_at, u.event_id
            from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
                as u(customer_id, trait, value, observed_at, event_id)
            order by 1, 2
            on conflict (customer_id, trait) do update set
                value = excluded.value, observed_at = excluded.observed_at, event_id = excluded.event_id
            where (excluded.observed_at, excluded.event_id) > (t.observed_at, t.event_id)
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [orjson.dumps(latest[k][2], default=str).decode() for k in keys],
            [latest[k][0] for k in keys],
            [latest[k][1] for k in keys],
        )
        await sql.execute(
            conn,
            """
            update customers c set dirty = true, updated_at = now(),
                city = left((select t.value #>> '{}' from customer_traits t
                             where t.customer_id = c.customer_id and t.trait = 'city'), 200)
            where c.customer_id = any($1::text[])
            """,
            sorted({k[0] for k in keys}),
        )
    for i in sorted(identified, key=lambda i: (i.anonymous_id or "", i.event_id)):
        if i.anonymous_id:  # a login after browsing: joins that visitor's history
            await link_anonymous_id(
                conn, customer_id=i.customer_id, anonymous_id=i.anonymous_id, linked_at=i.occurred_at
            )


async def link_anonymous_id(
    conn: asyncpg.Connection, *, customer_id: str, anonymous_id: str, linked_at: datetime
) -> int:
    """Join an anonymous history to its customer; returns how many interactions moved (0 when repeated).

    An anonymous id belongs to the first customer it was linked to.
    """
    await _lock_anonymous_ids(conn, [anonymous_id])
    await sql.execute(
        conn,
        "insert into identity_links (anonymous_id, customer_id, linked_at) values ($1, $2, $3) on conflict do nothing",
        anonymous_id,
        customer_id,
        linked_at,
    )
    owner = await conn.fetchval("select customer_id from identity_links where anonymous_id = $1", anonymous_id)
    if owner != customer_id:
        return 0
    claimed = await sql.fetch(
        conn,
        "update interactions set customer_id = $1 where anonymous_id = $2 and customer_id is null"
        " returning type, channel, sku, category, occurred_at",
        customer_id,
        anonymous_id,
    )
    await add_interaction_facts(conn, [(customer_id, *row) for row in claimed])
    return len(claimed)


async def track_points_balances(session: AsyncSession, events: Sequence[Envelope]) -> None:
    """The balance after the newest ledger entry (entry ids grow with the ledger) wins."""
    newest: dict[str, Points] = {}
    for change in (parse_points(event.data) for event in events):
        if change.customer_id not in newest or change.entry_id > newest[change.customer_id].entry_id:
            newest[change.customer_id] = change
    conn = await transaction_connection(session)
    ids = sorted(await live_customers(session, conn, newest))
    if ids:
        await sql.execute(
            conn,
            """
            insert into customers as c (customer_id, loyalty_points, loyalty_entry_id)
            select * from unnest($1::text[], $2::bigint[], $3::bigint[]) order by 1
            on conflict (customer_id) do update set
                loyalty_points = excluded.loyalty_points, loyalty_entry_id = excluded.loyalty_entry_id,
                dirty = true, updated_at = now()
            where coalesce(c.loyalty_entry_id, -1) < excluded.loyalty_entry_id
            """,
            ids,
            [newest[c].balance for c in ids],
            [newest[c].entry_id for c in ids],
        )


async def track_tiers(session: AsyncSession, events: Sequence[Envelope]) -> None:
    """The tier of the latest change wins (ties: the later tier name)."""
    latest: dict[str, TierChanged] = {}
    for change in _parse(TierChanged, events):
        known = latest.get(change.customer_id)
        if known is None or (change.occurred_at, change.to_tier) > (known.occurred_at, known.to_tier):
            latest[change.customer_id] = change
    conn = await transaction_connection(session)
    ids = sorted(await live_customers(session, conn, latest))
    if ids:
        await sql.execute(
            conn,
            """
            insert into customers as c (customer_id, loyalty_tier, tier_changed_at)
            select * from unnest($1::text[], $2::text[], $3::timestamptz[]) order by 1
            on conflict (customer_id) do update set
                loyalty_tier = excluded.loyalty_tier, tier_changed_at = excluded.tier_changed_at,
                dirty = true, updated_at = now()
            where c.tier_changed_at is null
               or (excluded.tier_changed_at, excluded.loyalty_tier) > (c.tier_changed_at, coalesce(c.loyalty_tier, ''))
            """,
            ids,
            [latest[c].to_tier for c in ids],
            [latest[c].occurred_at for c in ids],
        )


async def record_feedback(session: AsyncSession, events: Sequence[Envelope]) -> None:
    submitted = _first_by(_parse(FeedbackSubmitted, events), lambda f: f.feedback_id)
    conn = await transaction_connection(session)
    live = await live_customers(session, conn, (f.customer_id for f in submitted))
    submitted = sorted((f for f in submitted if f.customer_id in live), key=lambda f: f.feedback_id)
    if not submitted:
        return
    sentiments = [f.sentiment.score if f.sentiment else None for f in submitted]
    inserted = await sql.fetch(
        conn,
        """
        insert into feedback (feedback_id, customer_id, kind, score, sentiment, occurred_at)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::timestamptz[])
        order by 1
        on conflict do nothing returning feedback_id
        """,
        [f.feedback_id for f in submitted],
        [f.customer_id for f in submitted],
        [f.kind for f in submitted],
        [f.score for f in submitted],
        sentiments,
        [f.occurred_at for f in submitted],
    )
    new = {row[0] for row in inserted}
    # count, csat sum/count, rating sum/count, complaints, sentiment sum/count, nps (at, id, score)
    totals: dict[str, list[Any]] = {}
    for f, sentiment in zip(submitted, sentiments, strict=True):
        if f.feedback_id not in new:
            continue
        t = totals.setdefault(f.customer_id, [0, 0, 0, 0, 0, 0, 0.0, 0, None])
        t[0] += 1
        if f.kind == "csat" and f.score is not None:
            t[1], t[2] = t[1] + f.score, t[2] + 1
        if f.kind == "rating" and f.score is not None:
            t[3], t[4] = t[3] + f.score, t[4] + 1
        if f.kind == "complaint":
            t[5] += 1
        if sentiment is not None:
            t[6], t[7] = t[6] + sentiment, t[7] + 1
        if f.kind == "nps" and f.score is not None:
            candidate = (f.occurred_at, f.feedback_id, f.score)
            if t[8] is None or candidate[:2] > t[8][:2]:
                t[8] = candidate
    if not totals:
        return
    ids = sorted(totals)
    nps = [totals[c][8] for c in ids]
    newer_nps = (
        "excluded.nps_at is not null and (c.nps_at is null"
        " or (excluded.nps_at, excluded.nps_feedback_id) > (c.nps_at, coalesce(c.nps_feedback_id, '')))"
    )
    await sql.execute(
        conn,
        f"""
        insert into customers as c (customer_id, feedback_count, csat_sum, csat_count, rating_sum, rating_count,
                                    complaints, sentiment_sum, sentiment_count, nps_at, nps_feedback_id, nps_last,
                                    dirty, updated_at)
        select *, true, now() from unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::int[],
                                          $7::int[], $8::float8[], $9::int[], $10::timestamptz[], $11::text[],
                                          $12::int[])
        order by 1
        on conflict (customer_id) do update set
            feedback_count = c.feedback_count + excluded.feedback_count,
            csat_sum = c.csat_sum + excluded.csat_sum, csat_count = c.csat_count + excluded.csat_count,
            rating_sum = c.rating_sum + excluded.rating_sum, rating_count = c.rating_count + excluded.rating_count,
            complaints = c.complaints + excluded.complaints,
            sentiment_sum = c.sentiment_sum + excluded.sentiment_sum,
            sentiment_count = c.sentiment_count + excluded.sentiment_count,
            nps_last = case when {newer_nps} then excluded.nps_last else c.nps_last end,
            nps_feedback_id = case when {newer_nps} then excluded.nps_feedback_id else c.nps_feedback_id end,
            nps_at = case when {newer_nps} then excluded.nps_at else c.nps_at end,
            dirty = true, updated_at = now()
        """,
        ids,
        *[[totals[c][n] for c in ids] for n in range(8)],
        [n[0] if n else None for n in nps],
        [n[1] if n else None for n in nps],
        [n[2] if n else None for n in nps],
    )


def _segment_handler(member: bool) -> Any:
    async def handle(session: AsyncSession, events: Sequence[Envelope]) -> None:
        """The latest enter or exit wins; at the same instant an exit wins over an enter."""
        latest: dict[tuple[str, str], datetime] = {}
        for change in _parse(SegmentMembershipChanged, events):
            key = (change.customer_id, change.segment_key)
            latest[key] = max(latest.get(key, change.occurred_at), change.occurred_at)
        conn = await transaction_connection(session)
        live = await live_customers(session, conn, (c for c, _ in latest))
        keys = sorted(k for k in latest if k[0] in live)
        if not keys:
            return
        await sql.execute(
            conn,
            """
            insert into segment_memberships as s (customer_id, segment_key, member, changed_at)
            select u.customer_id, u.segment_key, $3, u.changed_at
            from unnest($1::text[], $2::text[], $4::timestamptz[]) as u(customer_id, segment_key, changed_at)
            order by 1, 2
            on conflict (customer_id, segment_key) do update set
                member = excluded.member, changed_at = excluded.changed_at
            where (excluded.changed_at, not excluded.member) > (s.changed_at, not s.member)
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            member,
            [latest[k] for k in keys],
        )
        await _mark_dirty(conn, (k[0] for k in keys))

    handle.__name__ = "join_segments" if member else "leave_segments"
    return handle


BATCH_HANDLERS: BatchHandlerMap = {
    "purchase.completed": count_purchases,
    "purchase.refunded": deduct_refunds,
    "interaction.recorded": count_interactions,
    "customer.identified": merge_identities,
    "points.earned": track_points_balances,
    "points.redeemed": track_points_balances,
    "points.reversed": track_points_balances,
    "points.expired": track_points_balances,
    "tier.changed": track_tiers,
    "feedback.submitted": record_feedback,
    "segment.entered": _segment_handler(member=True),
    "segment.exited": _segment_handler(member=False),
}
