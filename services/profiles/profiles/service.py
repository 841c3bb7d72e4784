"""Applying events to profiles. Never commits: the consumed message (or the request) does.

Each operation first records its fact under the fact's natural id (order id, refund id, event id,
feedback id); only a fact inserted now changes the aggregates, so a redelivery is a no-op. The
aggregates are sums, min/max, or "latest by (time, id)" choices: the same whatever the arrival order.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Integer, func, literal, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from profiles.events import (
    CustomerIdentified,
    FeedbackSubmitted,
    InteractionRecorded,
    PointsChanged,
    PurchaseCompleted,
    PurchaseRefunded,
    SegmentMembershipChanged,
    TierChanged,
)
from profiles.models import (
    Affinity,
    Base,
    Customer,
    CustomerRevenue,
    CustomerTrait,
    ErasedCustomer,
    Feedback,
    IdentityLink,
    Interaction,
    Order,
    OrderLine,
    Product,
    Refund,
    SegmentMembership,
)

# Interactions that say nothing about interest in the product they name.
NOT_INTEREST = frozenset({"remove_from_cart"})


@dataclass(frozen=True)
class InteractionFact:
    type: str
    channel: str
    sku: str | None
    category: str | None
    occurred_at: datetime


def customer_key(customer_id: str) -> str:
    """How an erased customer is remembered: a hash, so the tombstone holds no identifier."""
    return hashlib.sha256(customer_id.encode()).hexdigest()


def _session_set(session: AsyncSession, name: str) -> set[str]:
    """Per-transaction memo (a consumed batch is one transaction), so a busy customer is looked up once."""
    memo: set[str] = session.info.setdefault(name, set())
    return memo


async def is_erased(session: AsyncSession, customer_id: str) -> bool:
    live = _session_set(session, "profiles_not_erased")
    if customer_id in live:
        return False
    found = await session.execute(
        select(ErasedCustomer.customer_key).where(ErasedCustomer.customer_key == customer_key(customer_id))
    )
    if found.first() is not None:
        return True
    live.add(customer_id)
    return False


def forget_in_session(session: AsyncSession, customer_id: str) -> None:
    """After an erasure in this transaction, later events for the customer must see the tombstone."""
    _session_set(session, "profiles_not_erased").discard(customer_id)


async def _touch(session: AsyncSession, customer_id: str) -> None:
    """Make sure the profile row exists."""
    await session.execute(insert(Customer).values(customer_id=customer_id).on_conflict_do_nothing())


async def _update_customer(session: AsyncSession, customer_id: str, values: Mapping[str, Any]) -> None:
    """Update the profile, creating it first when this is the customer's first event (one statement usually)."""
    statement = (
        update(Customer)
        .where(Customer.customer_id == customer_id)
        .values(**values, dirty=True, updated_at=func.now())
        .returning(Customer.customer_id)
        .execution_options(synchronize_session=False)
    )
    if (await session.execute(statement)).first() is None:
        await _touch(session, customer_id)
        await session.execute(statement)


def _bump(column: InstrumentedAttribute[dict[str, int]], counts: Mapping[str, int]) -> ColumnElement[Any]:
    """jsonb counters: column || {key: old + n, ...}."""
    pairs: list[Any] = []
    for key, n in sorted(counts.items()):
        pairs += [literal(key), func.coalesce(column[key].astext.cast(Integer), 0) + n]
    return column.op("||")(func.jsonb_build_object(*pairs))


async def _add_affinities(
    session: AsyncSession, customer_id: str, *, purchased: Counter[tuple[str, str]], views: Counter[tuple[str, str]]
) -> None:
    keys = sorted(set(purchased) | set(views))
    if not keys:
        return
    rows = [
        {
            "customer_id": customer_id,
            "kind": kind,
            "key": key,
            "purchased": purchased[kind, key],
            "views": views[kind, key],
        }
        for kind, key in keys
    ]
    stmt = insert(Affinity).values(rows)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Affinity.customer_id, Affinity.kind, Affinity.key],
            set_={
                "purchased": Affinity.purchased + stmt.excluded.purchased,
                "views": Affinity.views + stmt.excluded.views,
            },
        )
    )


async def _refresh_revenue(session: AsyncSession, customer_id: str) -> None:
    """Show the currency with the most orders (then alphabetical); amounts are never converted."""
    primary = (
        select(CustomerRevenue)
        .where(CustomerRevenue.customer_id == customer_id)
        .order_by(CustomerRevenue.orders.desc(), CustomerRevenue.currency)
        .limit(1)
        .subquery()
    )
    await session.execute(
        update(Customer)
        .where(Customer.customer_id == customer_id)
        .where(Customer.customer_id == primary.c.customer_id)
        .values(
            currency=primary.c.currency,
            currency_orders=primary.c.orders,
            gross_revenue=primary.c.gross,
            refunded_amount=primary.c.refunded,
            net_revenue=primary.c.gross - primary.c.refunded,
        )
        .execution_options(synchronize_session=False)
    )


async def _add_revenue(
    session: AsyncSession, customer_id: str, currency: str, *, orders: int, gross: Decimal, refunded: Decimal
) -> None:
    stmt = insert(CustomerRevenue).values(
        customer_id=customer_id,
        currency=currency,
        orders=orders,
        gross=gross,
        refunded=refunded,
        refunds=1 if refunded else 0,
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[CustomerRevenue.customer_id, CustomerRevenue.currency],
            set_={
                "orders": CustomerRevenue.orders + stmt.excluded.orders,
                "gross": CustomerRevenue.gross + stmt.excluded.gross,
                "refunded": CustomerRevenue.refunded + stmt.excluded.refunded,
                "refunds": CustomerRevenue.refunds + stmt.excluded.refunds,
            },
        )
    )
    await _refresh_revenue(session, customer_id)


async def _insert_fact(session: AsyncSession, model: type[Base], values: Mapping[str, Any]) -> bool:
    """Record a fact under its natural key; False when it was already recorded (a redelivery)."""
    inserted = await session.execute(insert(model).values(**values).on_conflict_do_nothing().returning(literal(1)))
    return inserted.first() is not None


async def record_purchase(session: AsyncSession, *, purchase: PurchaseCompleted) -> bool:
    """Count an order once; returns False when it was already counted (or the customer was erased)."""
    customer_id = purchase.customer_id
    if await is_erased(session, customer_id):
        return False
    if not await _insert_fact(
        session,
        Order,
        dict(
            customer_id=customer_id,
            order_id=purchase.order_id,
            occurred_at=purchase.occurred_at,
            currency=purchase.currency,
            channel=purchase.channel,
            store_id=purchase.store_id,
            total=purchase.total,
        ),
    ):
        return False
    await session.execute(
        insert(OrderLine),
        [
            {
                "customer_id": customer_id,
                "order_id": purchase.order_id,
                "line_no": n,
                "sku": item.sku,
                "category": item.category,
                "quantity": item.quantity,
                "unit_price": item.unit_price,
            }
            for n, item in enumerate(purchase.items)
        ],
    )
    await _remember_products(session, purchase)
    purchased: Counter[tuple[str, str]] = Counter()
    for item in purchase.items:
        purchased["product", item.sku] += item.quantity
        if item.category:
            purchased["category", item.category] += item.quantity
    await _update_customer(
        session,
        customer_id,
        {
            "orders": Customer.orders + 1,
            "first_purchase_at": func.least(Customer.first_purchase_at, purchase.occurred_at),
            "last_purchase_at": func.greatest(Customer.last_purchase_at, purchase.occurred_at),
            "order_channels": _bump(Customer.order_channels, {purchase.channel: 1}),
        },
    )
    await _add_affinities(session, customer_id, purchased=purchased, views=Counter())
    await _add_revenue(session, customer_id, purchase.currency, orders=1, gross=purchase.total, refunded=Decimal(0))
    return True


async def _remember_products(session: AsyncSession, purchase: PurchaseCompleted) -> None:
    products = {item.sku: item for item in purchase.items}
    stmt = insert(Product).values(
        [{"sku": sku, "name": item.name, "category": item.category} for sku, item in sorted(products.items())]
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Product.sku],
            set_={
                "name": func.coalesce(stmt.excluded.name, Product.name),
                "category": func.coalesce(stmt.excluded.category, Product.category),
            },
        )
    )


async def record_refund(session: AsyncSession, *, refund: PurchaseRefunded) -> bool:
    if await is_erased(session, refund.customer_id):
        return False
    if not await _insert_fact(
        session,
        Refund,
        dict(
            refund_id=refund.refund_id,
            customer_id=refund.customer_id,
            order_id=refund.order_id,
            occurred_at=refund.occurred_at,
            currency=refund.currency,
            amount=refund.amount,
        ),
    ):
        return False
    await _update_customer(session, refund.customer_id, {"refunds": Customer.refunds + 1})
    await _add_revenue(session, refund.customer_id, refund.currency, orders=0, gross=Decimal(0), refunded=refund.amount)
    return True


async def _lock_anonymous_id(session: AsyncSession, anonymous_id: str) -> None:
    """Serialise an anonymous visitor's events with its identification (they come on different keys)."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(literal("profiles:anon:") + anonymous_id, 0)))
    )


async def _linked_customer(session: AsyncSession, anonymous_id: str) -> str | None:
    found = await session.execute(select(IdentityLink.customer_id).where(IdentityLink.anonymous_id == anonymous_id))
    return found.scalar_one_or_none()


def _property(properties: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = properties.get(name)
    return str(value)[:limit] if isinstance(value, str | int) and str(value) else None


async def record_interaction(session: AsyncSession, *, interaction: InteractionRecorded) -> bool:
    customer_id = interaction.customer_id
    if customer_id is None:
        if interaction.anonymous_id is None:
            raise ValueError("interaction has neither customer_id nor anonymous_id")
        await _lock_anonymous_id(session, interaction.anonymous_id)
        customer_id = await _linked_customer(session, interaction.anonymous_id)
    if customer_id is not None and await is_erased(session, customer_id):
        return False
    fact = InteractionFact(
        type=interaction.type,
        channel=interaction.channel,
        sku=_property(interaction.properties, "sku", 128),
        category=_property(interaction.properties, "category", 200),
        occurred_at=interaction.occurred_at,
    )
    if not await _insert_fact(
        session,
        Interaction,
        dict(
            event_id=interaction.event_id,
            customer_id=customer_id,
            anonymous_id=interaction.anonymous_id,
            occurred_at=fact.occurred_at,
            type=fact.type,
            channel=fact.channel,
            sku=fact.sku,
            category=fact.category,
        ),
    ):
        return False
    if customer_id is not None:
        await _count_interactions(session, customer_id, [fact])
    return True


async def _count_interactions(session: AsyncSession, customer_id: str, facts: Sequence[InteractionFact]) -> None:
    if not facts:
        return
    views: Counter[tuple[str, str]] = Counter()
    for fact in facts:
        if fact.type in NOT_INTEREST:
            continue
        if fact.sku:
            views["product", fact.sku] += 1
        if fact.category:
            views["category", fact.category] += 1
    await _update_customer(
        session,
        customer_id,
        {
            "interaction_counts": _bump(Customer.interaction_counts, Counter(f.type for f in facts)),
            "interaction_channels": _bump(Customer.interaction_channels, Counter(f.channel for f in facts)),
            "last_seen_at": func.greatest(Customer.last_seen_at, max(f.occurred_at for f in facts)),
        },
    )
    await _add_affinities(session, customer_id, purchased=Counter(), views=views)


async def identify_customer(session: AsyncSession, *, identified: CustomerIdentified) -> None:
    customer_id = identified.customer_id
    if await is_erased(session, customer_id):
        return
    await _touch(session, customer_id)
    if identified.traits:
        await _record_traits(session, identified)
    if identified.anonymous_id:
        await link_anonymous_id(
            session, customer_id=customer_id, anonymous_id=identified.anonymous_id, linked_at=identified.occurred_at
        )


async def _record_traits(session: AsyncSession, identified: CustomerIdentified) -> None:
    rows = [
        {
            "customer_id": identified.customer_id,
            "trait": trait[:100],
            "value": value,
            "observed_at": identified.occurred_at,
            "event_id": identified.event_id,
        }
        for trait, value in sorted(identified.traits.items())
    ]
    stmt = insert(CustomerTrait).values(rows)
    newer = tuple_(stmt.excluded.observed_at, stmt.excluded.event_id) > tuple_(
        CustomerTrait.observed_at, CustomerTrait.event_id
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[CustomerTrait.customer_id, CustomerTrait.trait],
            set_={
                "value": stmt.excluded.value,
                "observed_at": stmt.excluded.observed_at,
                "event_id": stmt.excluded.event_id,
            },
            where=newer,
        )
    )
    city = (
        select(CustomerTrait.value.op("#>>")(text("'{}'")))
        .where(CustomerTrait.customer_id == identified.customer_id)
        .where(CustomerTrait.trait == "city")
        .scalar_subquery()
    )
    await _update_customer(session, identified.customer_id, {"city": func.left(city, 200)})


async def link_anonymous_id(session: AsyncSession, *, customer_id: str, anonymous_id: str, linked_at: datetime) -> int:
    """Join an anonymous history to its customer; returns how many interactions moved (0 when repeated)."""
    await _lock_anonymous_id(session, anonymous_id)
    await session.execute(
        insert(IdentityLink)
        .values(anonymous_id=anonymous_id, customer_id=customer_id, linked_at=linked_at)
        .on_conflict_do_nothing()
    )
    if await _linked_customer(session, anonymous_id) != customer_id:
        return 0  # The anonymous id already belongs to another customer: the first link wins.
    claimed = await session.execute(
        update(Interaction)
        .where(Interaction.anonymous_id == anonymous_id)
        .where(Interaction.customer_id.is_(None))
        .values(customer_id=customer_id)
        .returning(
            Interaction.type, Interaction.channel, Interaction.sku, Interaction.category, Interaction.occurred_at
        )
        .execution_options(synchronize_session=False)
    )
    facts = [InteractionFact(*row) for row in claimed.all()]
    await _count_interactions(session, customer_id, facts)
    return len(facts)


async def record_points_balance(session: AsyncSession, *, change: PointsChanged) -> None:
    """The balance after the newest ledger entry (entry ids grow with the ledger) wins."""
    if await is_erased(session, change.customer_id):
        return
    await _touch(session, change.customer_id)
    await session.execute(
        update(Customer)
        .where(Customer.customer_id == change.customer_id)
        .where(func.coalesce(Customer.loyalty_entry_id, -1) < change.entry_id)
        .values(loyalty_points=change.balance, loyalty_entry_id=change.entry_id, dirty=True, updated_at=func.now())
        .execution_options(synchronize_session=False)
    )


async def record_tier(session: AsyncSession, *, change: TierChanged) -> None:
    """The tier of the latest change wins (ties: the later tier name, so the result is deterministic)."""
    if await is_erased(session, change.customer_id):
        return
    await _touch(session, change.customer_id)
    newer = Customer.tier_changed_at.is_(None) | (
        tuple_(literal(change.occurred_at), literal(change.to_tier))
        > tuple_(Customer.tier_changed_at, func.coalesce(Customer.loyalty_tier, ""))
    )
    await session.execute(
        update(Customer)
        .where(Customer.customer_id == change.customer_id)
        .where(newer)
        .values(loyalty_tier=change.to_tier, tier_changed_at=change.occurred_at, dirty=True, updated_at=func.now())
        .execution_options(synchronize_session=False)
    )


async def record_feedback(session: AsyncSession, *, feedback: FeedbackSubmitted) -> bool:
    if await is_erased(session, feedback.customer_id):
        return False
    sentiment = feedback.sentiment.score if feedback.sentiment else None
    if not await _insert_fact(
        session,
        Feedback,
        dict(
            feedback_id=feedback.feedback_id,
            customer_id=feedback.customer_id,
            kind=feedback.kind,
            score=feedback.score,
            sentiment=sentiment,
            occurred_at=feedback.occurred_at,
        ),
    ):
        return False
    values: dict[str, Any] = {"feedback_count": Customer.feedback_count + 1}
    if feedback.kind == "csat" and feedback.score is not None:
        values |= {"csat_sum": Customer.csat_sum + feedback.score, "csat_count": Customer.csat_count + 1}
    if feedback.kind == "rating" and feedback.score is not None:
        values |= {"rating_sum": Customer.rating_sum + feedback.score, "rating_count": Customer.rating_count + 1}
    if feedback.kind == "complaint":
        values["complaints"] = Customer.complaints + 1
    if sentiment is not None:
        values |= {"sentiment_sum": Customer.sentiment_sum + sentiment, "sentiment_count": Customer.sentiment_count + 1}
    await _update_customer(session, feedback.customer_id, values)
    if feedback.kind == "nps" and feedback.score is not None:
        await _record_latest_nps(session, feedback)
    return True


async def _record_latest_nps(session: AsyncSession, feedback: FeedbackSubmitted) -> None:
    newer = Customer.nps_at.is_(None) | (
        tuple_(literal(feedback.occurred_at), literal(feedback.feedback_id))
        > tuple_(Customer.nps_at, func.coalesce(Customer.nps_feedback_id, ""))
    )
    await session.execute(
        update(Customer)
        .where(Customer.customer_id == feedback.customer_id)
        .where(newer)
        .values(nps_last=feedback.score, nps_at=feedback.occurred_at, nps_feedback_id=feedback.feedback_id)
        .execution_options(synchronize_session=False)
    )


async def record_segment_membership(session: AsyncSession, *, change: SegmentMembershipChanged, member: bool) -> None:
    """The latest enter or exit wins; at the same instant an exit wins over an enter."""
    if await is_erased(session, change.customer_id):
        return
    stmt = insert(SegmentMembership).values(
        customer_id=change.customer_id, segment_key=change.segment_key, member=member, changed_at=change.occurred_at
    )
    newer = tuple_(stmt.excluded.changed_at, ~stmt.excluded.member) > tuple_(
        SegmentMembership.changed_at, ~SegmentMembership.member
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[SegmentMembership.customer_id, SegmentMembership.segment_key],
            set_={"member": stmt.excluded.member, "changed_at": stmt.excluded.changed_at},
            where=newer,
        )
    )
    await _update_customer(session, change.customer_id, {})


def utcnow() -> datetime:
    return datetime.now(UTC)
