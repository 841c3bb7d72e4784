"""What loyalty consumes and what it publishes on loyalty.accounts.v1 and loyalty.erasures.v1."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.envelope import Envelope, new_event

SOURCE = "cx.loyalty"
POINTS_EARNED = "points.earned"
POINTS_REDEEMED = "points.redeemed"
POINTS_REVERSED = "points.reversed"
POINTS_EXPIRED = "points.expired"
TIER_CHANGED = "tier.changed"
ERASURE_CONFIRMED = "erasure.confirmed"


class _Consumed(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PurchaseItem(_Consumed):
    sku: str
    category: str | None = None
    quantity: int = Field(gt=0)
    unit_price: Decimal = Field(ge=0)


class PurchaseCompleted(_Consumed):
    """The part of ingest's purchase.completed data loyalty needs."""

    order_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=128)
    currency: str
    total: Decimal = Field(ge=0)
    occurred_at: AwareDatetime
    items: list[PurchaseItem] = []


class RefundItem(_Consumed):
    sku: str
    quantity: int = Field(gt=0)
    unit_price: Decimal | None = Field(None, ge=0)
    category: str | None = None


class PurchaseRefunded(_Consumed):
    refund_id: str = Field(min_length=1, max_length=200)
    order_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=128)
    currency: str
    occurred_at: AwareDatetime
    items: list[RefundItem] | None = None
    amount: Decimal = Field(ge=0)


class CustomerIdentified(_Consumed):
    customer_id: str = Field(min_length=1, max_length=128)
    occurred_at: AwareDatetime | None = None


class SegmentMembershipChanged(_Consumed):
    """segment.entered / segment.exited (CONTRACT.md)."""

    customer_id: str = Field(min_length=1, max_length=128)
    segment_key: str = Field(min_length=1, max_length=200)
    occurred_at: AwareDatetime


class FeedbackSubmitted(_Consumed):
    feedback_id: str
    customer_id: str = Field(min_length=1, max_length=128)
    order_id: str | None = Field(None, max_length=200)
    occurred_at: AwareDatetime


class ErasureRequested(_Consumed):
    request_id: str
    customer_id: str = Field(min_length=1, max_length=128)
    requested_at: AwareDatetime | None = None


class PointsEarned(BaseModel):
    customer_id: str
    points: int
    balance: int
    cause_type: str
    cause_id: str
    entry_id: int
    occurred_at: datetime


class PointsRedeemed(BaseModel):
    customer_id: str
    points: int
    balance: int
    redemption_id: str
    reason: str
    entry_id: int
    occurred_at: datetime


class PointsReversed(BaseModel):
    customer_id: str
    points: int  # taken from the balance
    balance: int
    cause_type: str
    cause_id: str
    entry_id: int
    occurred_at: datetime
    shortfall: int = 0  # reversed points already spent, not taken back


class PointsExpired(BaseModel):
    customer_id: str
    points: int
    balance: int
    entry_id: int
    occurred_at: datetime
    lot_id: int


class TierChanged(BaseModel):
    customer_id: str
    from_tier: str
    to_tier: str
    qualifying_points: int
    occurred_at: datetime


class ErasureConfirmed(BaseModel):
    request_id: str
    customer_id: str
    service: str
    confirmed_at: datetime


_EVENT_TYPES: dict[type[BaseModel], str] = {
    PointsEarned: POINTS_EARNED,
    PointsRedeemed: POINTS_REDEEMED,
    PointsReversed: POINTS_REVERSED,
    PointsExpired: POINTS_EXPIRED,
    TierChanged: TIER_CHANGED,
    ErasureConfirmed: ERASURE_CONFIRMED,
}


def envelope_for(data: PointsEarned | PointsRedeemed | PointsReversed | PointsExpired | TierChanged) -> Envelope:
    return new_event(type=_EVENT_TYPES[type(data)], source=SOURCE, subject=data.customer_id, data=data)


def erasure_confirmed(data: ErasureConfirmed) -> Envelope:
    return new_event(type=ERASURE_CONFIRMED, source=SOURCE, subject=data.customer_id, data=data)
