"""Loyalty's tables: members with a stored balance, the append-only ledger behind it, and what earns."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


# Erasure rewrites a member's id everywhere: child rows follow through ON UPDATE CASCADE.
def _member_fk() -> ForeignKey:
    return ForeignKey("members.customer_id", onupdate="CASCADE")


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"
    # The database itself refuses a negative balance, whatever the code does.
    __table_args__ = (CheckConstraint("points >= 0", name="members_points_not_negative"),)

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    tier: Mapped[str] = mapped_column(String(32), default="bronze")
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    tier_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LedgerEntry(Base):
    """One movement of points. Credits are lots: `remaining` is what debits (oldest first) left of them."""

    __tablename__ = "ledger_entries"
    # One entry per cause: a redelivered purchase cannot earn twice even past the processed row.
    __table_args__ = (
        UniqueConstraint("customer_id", "kind", "cause_type", "cause_id", name="ledger_entries_one_per_cause"),
        CheckConstraint("remaining IS NULL OR (remaining >= 0 AND remaining <= points)", name="ledger_lot_bounds"),
        Index("ix_ledger_entries_customer_page", "customer_id", "id"),
        Index("ix_ledger_open_lots", "customer_id", "expires_at", "id", postgresql_where=text("remaining > 0")),
        Index("ix_ledger_lots_due", "expires_at", postgresql_where=text("remaining > 0")),
        Index("ix_ledger_qualifying", "customer_id", "qualifying_at", postgresql_where=text("qualifying <> 0")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(_member_fk(), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # earn, redeem, reverse, expire, adjust
    points: Mapped[int] = mapped_column(BigInteger)  # signed: credits positive, debits negative
    cause_type: Mapped[str] = mapped_column(String(32))
    cause_id: Mapped[str] = mapped_column(String(300))  # segment bonuses: "<segment key>@<entered at>"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    balance_after: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(500))
    remaining: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Points toward tiers (orders and their reversals), dated by the order so they leave the window with it.
    qualifying: Mapped[int] = mapped_column(BigInteger, default=0)
    qualifying_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A reversal of points already spent: what could not be taken back (balance floors at zero).
    shortfall: Mapped[int] = mapped_column(BigInteger, default=0)


class Order(Base):
    """What an order earned, kept so refunds reverse the points of what was refunded."""

    __tablename__ = "orders"

    customer_id: Mapped[str] = mapped_column(_member_fk(), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    raw_points: Mapped[Decimal] = mapped_column(Numeric(30, 10))  # before the once-per-order rounding
    points: Mapped[int] = mapped_column(BigInteger)
    unit_points: Mapped[dict[str, Any]] = mapped_column(JSONB)  # sku -> raw points per unit (decimal string)
    refunded_raw_points: Mapped[Decimal] = mapped_column(Numeric(30, 10), default=Decimal(0))
    reversed_points: Mapped[int] = mapped_column(BigInteger, default=0)


class Refund(Base):
    """Every refund seen, once; `pending` until its order's purchase has arrived."""

    __tablename__ = "refunds"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    refund_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16))  # pending, applied
    __table_args__ = (
        Index("ix_refunds_pending", "customer_id", "order_id", postgresql_where=text("state = 'pending'")),
    )


class SegmentMembership(Base):
    """Loyalty's copy of segment membership, the latest event by occurred_at winning."""

    __tablename__ = "segment_memberships"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    segment_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[bool]
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """A redemption's Idempotency-Key: the request it answered and the answer to replay."""

    __tablename__ = "idempotency_keys"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[str | None] = mapped_column(Text)  # the JSON answer, byte for byte
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


class EarningRulesRow(Base):
    """The one current earning rules document (id 1), versioned."""

    __tablename__ = "earning_rules"
    __table_args__ = (CheckConstraint("id = 1", name="earning_rules_single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint("ends_at > starts_at", name="campaigns_window"),
        CheckConstraint("multiplier > 0", name="campaigns_multiplier_positive"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    multiplier: Mapped[Decimal] = mapped_column(Numeric(12, 4))
    segment_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
