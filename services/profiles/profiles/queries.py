"""Reading profiles: one customer, a filtered and sorted page of customers, and the full export."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import orjson
from sqlalchemy import ColumnElement, Select, and_, exists, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.config import ProfilesSettings
from profiles.models import (
    Affinity,
    Customer,
    CustomerTrait,
    Feedback,
    IdentityLink,
    Interaction,
    Order,
    OrderLine,
    Refund,
    SegmentMembership,
)
from profiles.portrait import SNAPSHOT_COLUMNS, customer_row, money, profile_snapshot, stage_of, top_categories
from shared.db import transaction_connection

SortField = Literal["net_revenue", "last_purchase_at", "first_purchase_at", "orders", "last_seen_at", "customer_id"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # sorts customers without a date first (ascending)


class InvalidCursor(ValueError):
    pass


# The whole GET view in one round trip: the row, its traits, segments and ranked affinities.
_VIEW = f"""
    select {SNAPSHOT_COLUMNS},
        (select coalesce(jsonb_object_agg(t.trait, t.value), '{{}}'::jsonb)::text
         from customer_traits t where t.customer_id = c.customer_id) as traits,
        array(select s.segment_key from segment_memberships s
              where s.customer_id = c.customer_id and s.member) as segments,
        (select coalesce(json_agg(json_build_array(a.kind, a.key, a.purchased, a.views, a.score)
                                  order by a.kind, a.score desc, a.key), '[]')::text
         from (select kind, key, purchased, views, purchased * $2::numeric + views * $3::numeric as score,
                      row_number() over (partition by kind
                                         order by purchased * $2::numeric + views * $3::numeric desc, key) as rank
               from affinities where customer_id = c.customer_id) a
         where a.rank <= $4) as affinities
    from customers c where c.customer_id = $1
"""
PREFERENCES_SHOWN = 20


async def fetch_customer_view(
    conn: asyncpg.Connection, *, customer_id: str, settings: ProfilesSettings, now: datetime
) -> dict[str, Any] | None:
    """The profile as GET shows it: the published snapshot's fields, all traits, and the preferences."""
    record = await conn.fetchrow(
        _VIEW,
        customer_id,
        settings.purchase_weight,
        settings.view_weight,
        max(PREFERENCES_SHOWN, settings.top_categories),
    )
    if record is None:
        return None
    row = customer_row(record)
    traits: dict[str, Any] = orjson.loads(row["traits"])
    preferences: dict[str, list[dict[str, Any]]] = {"category": [], "product": []}
    for kind, key, purchased, views, score in orjson.loads(row["affinities"]):
        name = "category" if kind == "category" else "sku"
        preferences[kind].append({name: key, "purchased": purchased, "views": views, "score": float(score)})
    view = profile_snapshot(
        row,
        stage=stage_of(row, settings, now),
        top_categories=[p["category"] for p in preferences["category"][: settings.top_categories]],
        segments=row["segments"],
        traits=traits,
    )
    currency = row["currency"]
    return {
        "customer_id": customer_id,
        "version": row["version"],
        **view,
        "traits": dict(sorted(traits.items())),
        "gross_revenue": money(row["gross_revenue"], currency),
        "refunded_amount": money(row["refunded_amount"], currency),
        "category_preferences": preferences["category"][:PREFERENCES_SHOWN],
        "product_preferences": preferences["product"][:PREFERENCES_SHOWN],
        "channel_preferences": {
            "orders": dict(sorted(row["order_channels"].items())),
            "interactions": dict(sorted(row["interaction_channels"].items())),
        },
        "updated_at": row["updated_at"].isoformat(),
    }


async def customer_view(
    session: AsyncSession, *, customer_id: str, settings: ProfilesSettings, now: datetime
) -> dict[str, Any] | None:
    """fetch_customer_view inside a session's transaction."""
    conn = await transaction_connection(session)
    return await fetch_customer_view(conn, customer_id=customer_id, settings=settings, now=now)


@dataclass(frozen=True)
class CustomerFilter:
    stage: str | None = None
    min_revenue: Decimal | None = None
    max_revenue: Decimal | None = None
    last_purchase_before: datetime | None = None
    last_purchase_after: datetime | None = None
    tier: str | None = None
    city: str | None = None
    category: str | None = None


def _sort_key(sort: SortField) -> ColumnElement[Any]:
    columns: dict[str, Any] = {
        "net_revenue": Customer.net_revenue,
        "orders": Customer.orders,
        "last_purchase_at": func.coalesce(Customer.last_purchase_at, EPOCH),
        "first_purchase_at": func.coalesce(Customer.first_purchase_at, EPOCH),
        "last_seen_at": func.coalesce(Customer.last_seen_at, EPOCH),
        "customer_id": Customer.customer_id,
    }
    key: ColumnElement[Any] = columns[sort]
    return key


def encode_cursor(sort: SortField, order: str, value: Any, customer_id: str) -> str:
    raw = orjson.dumps([sort, order, value, customer_id], default=str)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: SortField, order: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, cursor_order, value, customer_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError) as error:
        raise InvalidCursor("not a cursor from this endpoint") from error
    if (cursor_sort, cursor_order) != (sort, order) or not isinstance(customer_id, str):
        raise InvalidCursor("the cursor belongs to another sort order")
    if sort == "net_revenue":
        return Decimal(str(value)), customer_id
    if sort.endswith("_at"):
        return datetime.fromisoformat(str(value)), customer_id
    if sort == "orders":
        return int(value), customer_id
    return str(value), customer_id


def _filtered(query: Select[Any], where: CustomerFilter) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = []
    if where.stage:
        conditions.append(Customer.lifecycle_stage == where.stage)
    if where.min_revenue is not None:
        conditions.append(Customer.net_revenue >= where.min_revenue)
    if where.max_revenue is not None:
        conditions.append(Customer.net_revenue <= where.max_revenue)
    if where.last_purchase_before:
        conditions.append(Customer.last_purchase_at < where.last_purchase_before)
    if where.last_purchase_after:
        conditions.append(Customer.last_purchase_at >= where.last_purchase_after)
    if where.tier:
        conditions.append(Customer.loyalty_tier == where.tier)
    if where.city:
        conditions.append(func.lower(Customer.city) == where.city.lower())
    if where.category:
        conditions.append(
            exists().where(
                Affinity.customer_id == Customer.customer_id,
                Affinity.kind == "category",
                Affinity.key == where.category,
            )
        )
    return query.where(and_(*conditions)) if conditions else query


async def list_customers(
    session: AsyncSession,
    *,
    where: CustomerFilter,
    sort: SortField,
    order: Literal["asc", "desc"],
    limit: int,
    cursor: str | None,
    settings: ProfilesSettings,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of profile summaries and the cursor of the next page (None on the last)."""
    key = _sort_key(sort)
    query = _filtered(select(Customer, key.label("sort_value")), where)
    if cursor:
        value, after_id = decode_cursor(cursor, sort, order)
        position = tuple_(key, Customer.customer_id)
        query = query.where(position > tuple_(value, after_id) if order == "asc" else position < (value, after_id))
    direction = (key.asc(), Customer.customer_id.asc()) if order == "asc" else (key.desc(), Customer.customer_id.desc())
    rows = (await session.execute(query.order_by(*direction).limit(limit + 1))).all()
    page = rows[:limit]
    ids = [row[0].customer_id for row in page]
    categories = await top_categories(await transaction_connection(session), ids, settings=settings) if ids else {}
    items = [_summary(row[0], categories.get(row[0].customer_id, [])) for row in page]
    next_cursor = None
    if len(rows) > limit and page:
        last = page[-1]
        next_cursor = encode_cursor(sort, order, last.sort_value, last[0].customer_id)
    return items, next_cursor


def _summary(customer: Customer, categories: list[str]) -> dict[str, Any]:
    return {
        "customer_id": customer.customer_id,
        "lifecycle_stage": customer.lifecycle_stage,
        "orders": customer.orders,
        "net_revenue": money(customer.net_revenue, customer.currency),
        "currency": customer.currency,
        "first_purchase_at": customer.first_purchase_at,
        "last_purchase_at": customer.last_purchase_at,
        "last_seen_at": customer.last_seen_at,
        "loyalty_tier": customer.loyalty_tier,
        "city": customer.city,
        "top_categories": categories,
    }


async def export_customer(
    session: AsyncSession, *, customer_id: str, settings: ProfilesSettings, now: datetime
) -> dict[str, Any] | None:
    """Everything profiles holds about a customer (a data subject access request)."""
    profile = await customer_view(session, customer_id=customer_id, settings=settings, now=now)
    if profile is None:
        return None
    orders = (
        (await session.execute(select(Order).where(Order.customer_id == customer_id).order_by(Order.occurred_at)))
        .scalars()
        .all()
    )
    lines = (await session.execute(select(OrderLine).where(OrderLine.customer_id == customer_id))).scalars().all()
    currencies = {order.order_id: order.currency for order in orders}
    by_order: dict[str, list[dict[str, Any]]] = {}
    for line in sorted(lines, key=lambda line: (line.order_id, line.line_no)):
        by_order.setdefault(line.order_id, []).append(
            {
                "sku": line.sku,
                "category": line.category,
                "quantity": line.quantity,
                "unit_price": money(line.unit_price, currencies.get(line.order_id)),
            }
        )
    return {
        "customer_id": customer_id,
        "exported_at": now.isoformat(),
        "profile": profile,
        "traits": await _rows(session, CustomerTrait, CustomerTrait.customer_id == customer_id),
        "orders": [
            {
                "order_id": order.order_id,
                "occurred_at": order.occurred_at.isoformat(),
                "currency": order.currency,
                "channel": order.channel,
                "store_id": order.store_id,
                "total": money(order.total, order.currency),
                "items": by_order.get(order.order_id, []),
            }
            for order in orders
        ],
        "refunds": await _rows(session, Refund, Refund.customer_id == customer_id),
        "interactions": await _rows(session, Interaction, Interaction.customer_id == customer_id),
        "anonymous_ids": await _rows(session, IdentityLink, IdentityLink.customer_id == customer_id),
        "feedback": await _rows(session, Feedback, Feedback.customer_id == customer_id),
        "segment_memberships": await _rows(session, SegmentMembership, SegmentMembership.customer_id == customer_id),
        "affinities": await _rows(session, Affinity, Affinity.customer_id == customer_id),
    }


async def _rows(session: AsyncSession, model: Any, condition: ColumnElement[bool]) -> list[dict[str, Any]]:
    table = model.__table__
    result = await session.execute(select(table).where(condition).order_by(*table.primary_key.columns))
    exported: list[dict[str, Any]] = orjson.loads(orjson.dumps([dict(row) for row in result.mappings()], default=str))
    return exported


__all__ = ["CustomerFilter", "InvalidCursor", "customer_view", "export_customer", "list_customers"]
