"""The profile as others see it: the snapshot in profile.updated, the HTTP view, and publishing changes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.config import ProfilesSettings
from profiles.events import ProfileUpdated, profile_updated
from profiles.lifecycle import lifecycle_stage
from profiles.models import Affinity, Customer, CustomerTrait, SegmentMembership
from shared.money import is_currency, minor_unit
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import PROFILES

# Never leaves profiles' database in an event (GET and the export show them to authorised callers).
PRIVATE_TRAITS = frozenset({"email", "phone", "name", "first_name", "last_name", "address"})


def money(amount: Decimal | None, currency: str | None) -> str | None:
    if amount is None:
        return None
    places = minor_unit(currency) if currency and is_currency(currency) else 2
    return f"{amount:.{places}f}"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _ratio(score_sum: float, count: int) -> float | None:
    """Average of scores (CSAT, ratings, sentiment), not money."""
    return round(score_sum / count, 2) if count else None


def affinity_score(settings: ProfilesSettings) -> Any:
    return Affinity.purchased * settings.purchase_weight + Affinity.views * settings.view_weight


def preferred_channels(customer: Customer) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    for channel, n in [*customer.order_channels.items(), *customer.interaction_channels.items()]:
        counts[channel] += int(n)
    return sorted(counts, key=lambda channel: (-counts[channel], channel))


def purchase_statistics(customer: Customer) -> dict[str, Any]:
    average_order_value = customer.net_revenue / customer.currency_orders if customer.currency_orders else None
    average_days = None
    if customer.orders >= 2 and customer.first_purchase_at and customer.last_purchase_at:
        span = (customer.last_purchase_at - customer.first_purchase_at).total_seconds() / 86_400
        average_days = round(span / (customer.orders - 1), 2)
    return {
        "orders": customer.orders,
        "net_revenue": money(customer.net_revenue, customer.currency),
        "currency": customer.currency,
        "average_order_value": money(average_order_value, customer.currency),
        "first_purchase_at": _time(customer.first_purchase_at),
        "last_purchase_at": _time(customer.last_purchase_at),
        "average_days_between_orders": average_days,
        "refunds": customer.refunds,
    }


def satisfaction(customer: Customer) -> dict[str, Any]:
    return {
        "nps_last": customer.nps_last,
        "csat_avg": _ratio(customer.csat_sum, customer.csat_count),
        "rating_avg": _ratio(customer.rating_sum, customer.rating_count),
        "sentiment_avg": _ratio(customer.sentiment_sum, customer.sentiment_count),
        "complaints": customer.complaints,
        "feedback_count": customer.feedback_count,
    }


def profile_snapshot(
    customer: Customer,
    *,
    stage: str,
    top_categories: Sequence[str],
    segments: Sequence[str],
    traits: Mapping[str, Any],
) -> dict[str, Any]:
    """The profile in profile.updated (JSON-ready; no e-mail, phone or name)."""
    snapshot = {
        "lifecycle_stage": stage,
        **purchase_statistics(customer),
        "top_categories": list(top_categories),
        "preferred_channels": preferred_channels(customer),
        "interaction_counts": dict(sorted(customer.interaction_counts.items())),
        "last_seen_at": _time(customer.last_seen_at),
        "loyalty_tier": customer.loyalty_tier,
        "loyalty_points": customer.loyalty_points,
        "satisfaction": satisfaction(customer),
        "traits": {k: v for k, v in sorted(traits.items()) if k not in PRIVATE_TRAITS},
        "segments": sorted(segments),
    }
    normalised: dict[str, Any] = orjson.loads(orjson.dumps(snapshot))  # as stored in JSONB and sent
    return normalised


async def top_categories(
    session: AsyncSession, customer_ids: Sequence[str], *, settings: ProfilesSettings
) -> dict[str, list[str]]:
    score = affinity_score(settings)
    rank = func.row_number().over(partition_by=Affinity.customer_id, order_by=(score.desc(), Affinity.key))
    ranked = (
        select(Affinity.customer_id, Affinity.key, rank.label("rank"))
        .where(Affinity.customer_id.in_(customer_ids))
        .where(Affinity.kind == "category")
        .subquery()
    )
    rows = await session.execute(
        select(ranked.c.customer_id, ranked.c.key)
        .where(ranked.c.rank <= settings.top_categories)
        .order_by(ranked.c.customer_id, ranked.c.rank)
    )
    found: dict[str, list[str]] = defaultdict(list)
    for customer_id, key in rows:
        found[customer_id].append(key)
    return found


async def current_segments(session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, list[str]]:
    rows = await session.execute(
        select(SegmentMembership.customer_id, SegmentMembership.segment_key)
        .where(SegmentMembership.customer_id.in_(customer_ids))
        .where(SegmentMembership.member)
    )
    found: dict[str, list[str]] = defaultdict(list)
    for customer_id, key in rows:
        found[customer_id].append(key)
    return found


async def all_traits(session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = await session.execute(
        select(CustomerTrait.customer_id, CustomerTrait.trait, CustomerTrait.value).where(
            CustomerTrait.customer_id.in_(customer_ids)
        )
    )
    found: dict[str, dict[str, Any]] = defaultdict(dict)
    for customer_id, trait, value in rows:
        found[customer_id][trait] = value
    return found


def changed_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    if before is None:
        return sorted(after)
    return sorted(key for key in after if before.get(key) != after[key])


async def publish_profile_changes(
    session: AsyncSession, *, settings: ProfilesSettings, now: datetime, limit: int | None = None
) -> tuple[int, int]:
    """One batch of dirty profiles: publish profile.updated for those that changed; (claimed, published)."""
    stage = lifecycle_stage(settings, now)
    claimed = await session.execute(
        select(Customer, stage)
        .where(Customer.dirty)
        .order_by(Customer.customer_id)
        .limit(limit or settings.publish_batch_size)
        .with_for_update(skip_locked=True, of=Customer)
        .execution_options(populate_existing=True)
    )
    rows: list[tuple[Customer, str]] = [(row[0], row[1]) for row in claimed.all()]
    if not rows:
        return 0, 0
    ids = [customer.customer_id for customer, _ in rows]
    categories = await top_categories(session, ids, settings=settings)
    segments = await current_segments(session, ids)
    traits = await all_traits(session, ids)
    changes: list[dict[str, Any]] = []
    messages: list[OutgoingMessage] = []
    for customer, customer_stage in rows:
        snapshot = profile_snapshot(
            customer,
            stage=customer_stage,
            top_categories=categories.get(customer.customer_id, []),
            segments=segments.get(customer.customer_id, []),
            traits=traits.get(customer.customer_id, {}),
        )
        changed = changed_fields(customer.published, snapshot)
        version = customer.version + 1 if changed else customer.version
        changes.append({"cid": customer.customer_id, "v": version, "p": snapshot, "s": customer_stage})
        if changed:
            data = ProfileUpdated(
                customer_id=customer.customer_id, version=version, changed=changed, occurred_at=now, profile=snapshot
            )
            messages.append(OutgoingMessage(PROFILES, customer.customer_id, profile_updated(data)))
    table = Customer.__table__
    assert isinstance(table, Table)
    await session.execute(
        update(table)
        .where(table.c.customer_id == bindparam("cid"))
        .values(version=bindparam("v"), published=bindparam("p"), lifecycle_stage=bindparam("s"), dirty=False),
        changes,
    )
    await add_to_outbox(session, messages, max_message_bytes=settings.max_message_bytes)
    return len(rows), len(messages)


async def publish_all_changes(session: AsyncSession, *, settings: ProfilesSettings, now: datetime) -> int:
    """Publish batches until no unlocked dirty profile is left; returns how many were published."""
    total = 0
    while True:
        claimed, published = await publish_profile_changes(session, settings=settings, now=now)
        total += published
        if claimed == 0:
            return total
