"""Profiles' tables: facts keyed by their natural ids, and the per-customer aggregates derived from them.

Every aggregate is either a commutative sum over facts inserted once (counts, totals, min/max times)
or a value chosen by a total order on the facts (latest by time, then id), so the result does not
depend on the order in which events arrive.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    Numeric,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Amount = Numeric(20, 4)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """The profile: aggregates kept current by the handlers, published when they change."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("customers_dirty", "customer_id", postgresql_where=text("dirty")),
        Index("customers_stage", "lifecycle_stage"),
        Index("customers_net_revenue", "net_revenue", "customer_id"),
        Index("customers_last_purchase", "last_purchase_at", "customer_id"),
        Index("customers_tier", "loyalty_tier"),
    )

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    dirty: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    published: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the last snapshot sent (as written)
    lifecycle_stage: Mapped[str] = mapped_column(String(16), default="prospect", server_default="prospect")

    orders: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    currency: Mapped[str | None] = mapped_column(String(3))
    currency_orders: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gross_revenue: Mapped[Decimal] = mapped_column(Amount, default=0, server_default="0")
    refunded_amount: Mapped[Decimal] = mapped_column(Amount, default=0, server_default="0")
    net_revenue: Mapped[Decimal] = mapped_column(Amount, default=0, server_default="0")
    refunds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    order_channels: Mapped[dict[str, int]] = mapped_column(JSONB, default=dict, server_default="{}")

    interaction_counts: Mapped[dict[str, int]] = mapped_column(JSONB, default=dict, server_default="{}")
    interaction_channels: Mapped[dict[str, int]] = mapped_column(JSONB, default=dict, server_default="{}")
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    loyalty_tier: Mapped[str | None] = mapped_column(String(32))
    tier_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    loyalty_points: Mapped[int | None] = mapped_column(BigInteger)
    loyalty_entry_id: Mapped[int | None] = mapped_column(BigInteger)  # ledger order: the newest balance wins

    nps_last: Mapped[int | None] = mapped_column(Integer)
    nps_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    nps_feedback_id: Mapped[str | None] = mapped_column(String(128))
    csat_sum: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    csat_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rating_sum: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rating_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sentiment_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    sentiment_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    complaints: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    feedback_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    city: Mapped[str | None] = mapped_column(String(200))  # copied from the city trait for filtering
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CustomerRevenue(Base):
    """Totals per currency: the profile shows the currency with the most orders (no conversion)."""

    __tablename__ = "customer_revenue"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    orders: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gross: Mapped[Decimal] = mapped_column(Amount, default=0, server_default="0")
    refunded: Mapped[Decimal] = mapped_column(Amount, default=0, server_default="0")
    refunds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class CustomerTrait(Base):
    """One row per trait; the value observed latest (time, then event id) wins. Holds the PII."""

    __tablename__ = "customer_traits"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    trait: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB)
    observed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event_id: Mapped[str] = mapped_column(String(256))


class Order(Base):
    __tablename__ = "orders"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    currency: Mapped[str] = mapped_column(String(3))
    channel: Mapped[str] = mapped_column(String(32))
    store_id: Mapped[str | None] = mapped_column(String(128))
    total: Mapped[Decimal] = mapped_column(Amount)


class OrderLine(Base):
    __tablename__ = "order_lines"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(128))
    category: Mapped[str | None] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Amount)


class Refund(Base):
    __tablename__ = "refunds"

    refund_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    order_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(Amount)


class Interaction(Base):
    """Interactions by event id; customer_id is null until an anonymous visitor is identified."""

    __tablename__ = "interactions"
    __table_args__ = (
        Index("interactions_customer", "customer_id"),
        Index("interactions_unclaimed", "anonymous_id", postgresql_where=text("customer_id IS NULL")),
    )

    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(String(128))
    anonymous_id: Mapped[str | None] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    type: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    sku: Mapped[str | None] = mapped_column(String(128))
    category: Mapped[str | None] = mapped_column(String(200))


class IdentityLink(Base):
    """An anonymous id belongs to the first customer it was identified as."""

    __tablename__ = "identity_links"
    __table_args__ = (Index("identity_links_customer", "customer_id"),)

    anonymous_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    linked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Affinity(Base):
    """A customer's interest in a category or product: units bought and views."""

    __tablename__ = "affinities"
    __table_args__ = (Index("affinities_key", "kind", "key"),)

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # category | product
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    purchased: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    views: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Feedback(Base):
    __tablename__ = "feedback"

    feedback_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    score: Mapped[int | None] = mapped_column(Integer)
    sentiment: Mapped[float | None] = mapped_column(Float)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SegmentMembership(Base):
    """The latest enter/exit per segment wins (time, then exit over enter)."""

    __tablename__ = "segment_memberships"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    segment_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Product(Base):
    """Names and categories seen on purchases, for recommendation answers."""

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(300))
    category: Mapped[str | None] = mapped_column(String(200))


class ItemNeighbour(Base):
    """Item-to-item similarities from the last co-occurrence rebuild."""

    __tablename__ = "item_neighbours"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    neighbour: Mapped[str] = mapped_column(String(128), primary_key=True)
    score: Mapped[float] = mapped_column(Float)


class PopularItem(Base):
    __tablename__ = "popular_items"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    score: Mapped[float] = mapped_column(Float)


class ErasureRequest(Base):
    __tablename__ = "erasure_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(String(128))  # cleared once customer.erased is published
    customer_key: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of the customer id
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ErasureConfirmation(Base):
    __tablename__ = "erasure_confirmations"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(32), primary_key=True)
    confirmed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ErasedCustomer(Base):
    """Tombstones by hashed id: late events for an erased customer are ignored."""

    __tablename__ = "erased_customers"

    customer_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
