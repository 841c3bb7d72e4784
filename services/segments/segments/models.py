"""Segments' tables: its own copy of order facts and profile snapshots, scores, models, memberships."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """Every customer segments has heard of (from a purchase, a refund or a profile)."""

    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CustomerProfile(Base):
    """The latest profile.updated snapshot; `version` only moves forward."""

    __tablename__ = "customer_profiles"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    profile: Mapped[dict[str, Any]] = mapped_column(JSONB)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_customer_id", "customer_id", "occurred_at"),)

    order_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    currency: Mapped[str] = mapped_column(String(3))


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (Index("ix_refunds_customer_id", "customer_id"),)

    refund_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(200))
    customer_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount: Mapped[Decimal] = mapped_column(Numeric(18, 2))


class RfmCutPoints(Base):
    """Quintile boundaries of the last full computation; single customers are scored against them."""

    __tablename__ = "rfm_cut_points"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    customers: Mapped[int] = mapped_column(Integer)
    recency: Mapped[list[Decimal]] = mapped_column(ARRAY(Numeric))
    frequency: Mapped[list[Decimal]] = mapped_column(ARRAY(Numeric))
    monetary: Mapped[list[Decimal]] = mapped_column(ARRAY(Numeric))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RfmScore(Base):
    __tablename__ = "rfm_scores"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recency_days: Mapped[int] = mapped_column(Integer)
    frequency: Mapped[int] = mapped_column(Integer)
    monetary: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    r_score: Mapped[int] = mapped_column(SmallInteger)
    f_score: Mapped[int] = mapped_column(SmallInteger)
    m_score: Mapped[int] = mapped_column(SmallInteger)
    rfm_segment: Mapped[str] = mapped_column(String(32))


class ClvModel(Base):
    """A BG/NBD + Gamma-Gamma fit; alpha is kept in days whatever unit the caller asked for."""

    __tablename__ = "clv_models"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    fitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    calibration_end: Mapped[date | None] = mapped_column(Date)
    r: Mapped[float] = mapped_column(Float)
    alpha_days: Mapped[float] = mapped_column(Float)
    a: Mapped[float] = mapped_column(Float)
    b: Mapped[float] = mapped_column(Float)
    p: Mapped[float | None] = mapped_column(Float)
    q: Mapped[float | None] = mapped_column(Float)
    gamma: Mapped[float | None] = mapped_column(Float)
    log_likelihood: Mapped[float] = mapped_column(Float)
    customers: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    top_value_cut: Mapped[Decimal | None] = mapped_column(Numeric(18, 2))


class Prediction(Base):
    __tablename__ = "predictions"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    p_alive: Mapped[Decimal] = mapped_column(Numeric(8, 6))
    expected_purchases_90d: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    clv_365d: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    model_id: Mapped[int] = mapped_column(BigInteger)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ClusterModel(Base):
    """k-means centres in standardised feature space, with the scaler and each cluster's segment."""

    __tablename__ = "cluster_models"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    fitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    k: Mapped[int] = mapped_column(Integer)
    features: Mapped[list[str]] = mapped_column(ARRAY(Text))
    mean: Mapped[list[float]] = mapped_column(ARRAY(Float))
    scale: Mapped[list[float]] = mapped_column(ARRAY(Float))
    centres: Mapped[list[list[float]]] = mapped_column(JSONB)
    segment_ids: Mapped[list[str]] = mapped_column(ARRAY(Text))
    silhouette: Mapped[float | None] = mapped_column(Float)


class Segment(Base):
    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # rfm, rule, cluster, predictive
    description: Mapped[str] = mapped_column(Text, default="")
    rule: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, deleted
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SegmentMember(Base):
    # No foreign key to segments: a full recompute writes millions of rows and the FK check costs.
    # While a stay lasts, the member row is its entry's history row too: `change_id` is the id (from
    # membership_changes' sequence) the history shows it under; the exit writes it to membership_changes.
    __tablename__ = "segment_members"
    __table_args__ = (
        Index("ix_segment_members_customer_id", "customer_id"),
        Index("ix_segment_members_segment_change", "segment_id", "change_id"),
    )

    segment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    change_id: Mapped[int] = mapped_column(BigInteger)


class MembershipChange(Base):
    """Append-only history of ended stays and exits: who entered or left which segment, when and why.

    The entry of a stay still going on is its `segment_members` row; `service.membership_history`
    reads both.
    """

    __tablename__ = "membership_changes"
    __table_args__ = (
        Index("ix_membership_changes_segment", "segment_id", "occurred_at", "id"),
        Index("ix_membership_changes_customer", "customer_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    segment_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(128))
    change: Mapped[str] = mapped_column(String(8))  # entered, exited
    reason: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SegmentSize(Base):
    __tablename__ = "segment_sizes"
    __table_args__ = (Index("ix_segment_sizes_segment", "segment_id", "measured_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    segment_id: Mapped[str] = mapped_column(String(64))
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    size: Mapped[int] = mapped_column(Integer)
    entered: Mapped[int] = mapped_column(Integer)
    exited: Mapped[int] = mapped_column(Integer)


class RecomputeRun(Base):
    __tablename__ = "recompute_runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    customers: Mapped[int] = mapped_column(Integer)
    entered: Mapped[int] = mapped_column(Integer)
    exited: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[dict[str, float]] = mapped_column(JSONB)
