"""What profiles consumes (the parts of other services' events it reads) and what it publishes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from shared.envelope import Envelope, new_event

SOURCE = "cx.profiles"
PROFILE_UPDATED = "profile.updated"
ERASURE_REQUESTED = "customer.erasure_requested"
ERASURE_CONFIRMED = "erasure.confirmed"
CUSTOMER_ERASED = "customer.erased"


# The same instant in datetime.UTC: times parsed by pydantic each carry their own tzinfo object, and
# comparing two such times (sorting, min/max of a batch) cost ~10x a comparison of UTC times.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda at: at.astimezone(UTC))]


class _Incoming(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PurchasedItem(_Incoming):
    sku: str = Field(min_length=1, max_length=128)
    name: str | None = None
    category: str | None = Field(None, max_length=200)
    quantity: int = Field(gt=0)
    unit_price: Decimal


class PurchaseCompleted(_Incoming):
    order_id: str = Field(min_length=1, max_length=128)
    customer_id: str = Field(min_length=1, max_length=128)
    occurred_at: UtcDatetime
    currency: str = Field(min_length=3, max_length=3)
    channel: str = Field("web", max_length=32)
    store_id: str | None = None
    items: list[PurchasedItem] = Field(min_length=1)
    total: Decimal


class PurchaseRefunded(_Incoming):
    refund_id: str = Field(min_length=1, max_length=256)
    order_id: str = Field(min_length=1, max_length=128)
    customer_id: str = Field(min_length=1, max_length=128)
    occurred_at: UtcDatetime
    currency: str = Field(min_length=3, max_length=3)
    amount: Decimal


class InteractionRecorded(_Incoming):
    event_id: str = Field(min_length=1, max_length=256)
    customer_id: str | None = Field(None, max_length=128)
    anonymous_id: str | None = Field(None, max_length=128)
    occurred_at: UtcDatetime
    type: str = Field(min_length=1, max_length=64)
    channel: str = Field("web", max_length=32)
    properties: dict[str, Any] = Field(default_factory=dict)


class CustomerIdentified(_Incoming):
    event_id: str = Field(min_length=1, max_length=256)
    customer_id: str = Field(min_length=1, max_length=128)
    anonymous_id: str | None = Field(None, max_length=128)
    occurred_at: UtcDatetime
    traits: dict[str, Any] = Field(default_factory=dict)


class PointsChanged(_Incoming):
    """points.earned / redeemed / reversed / expired: only the balance after the entry matters here."""

    customer_id: str = Field(min_length=1, max_length=128)
    balance: int
    entry_id: int
    occurred_at: UtcDatetime


class TierChanged(_Incoming):
    customer_id: str = Field(min_length=1, max_length=128)
    to_tier: str = Field(min_length=1, max_length=32)
    occurred_at: UtcDatetime


class Sentiment(_Incoming):
    score: float
    label: str | None = None


class FeedbackSubmitted(_Incoming):
    feedback_id: str = Field(min_length=1, max_length=128)
    customer_id: str = Field(min_length=1, max_length=128)
    kind: Literal["nps", "csat", "rating", "comment", "complaint"]
    score: int | None = None
    sentiment: Sentiment | None = None
    occurred_at: UtcDatetime


class SegmentMembershipChanged(_Incoming):
    customer_id: str = Field(min_length=1, max_length=128)
    segment_key: str = Field(min_length=1, max_length=200)
    occurred_at: UtcDatetime


class ErasureRequested(BaseModel):
    request_id: str
    customer_id: str
    requested_at: datetime


class ErasureConfirmed(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str
    customer_id: str
    service: str
    confirmed_at: datetime


class CustomerErased(BaseModel):
    request_id: str
    customer_id: str
    erased_at: datetime
    services: list[str]


class ProfileUpdated(BaseModel):
    customer_id: str
    version: int
    changed: list[str]
    occurred_at: datetime
    profile: dict[str, Any]


def profile_updated(data: ProfileUpdated) -> Envelope:
    return new_event(type=PROFILE_UPDATED, source=SOURCE, subject=data.customer_id, data=data, time=data.occurred_at)


def erasure_requested(data: ErasureRequested) -> Envelope:
    return new_event(type=ERASURE_REQUESTED, source=SOURCE, subject=data.customer_id, data=data, time=data.requested_at)


def erasure_confirmed(data: ErasureConfirmed) -> Envelope:
    return new_event(type=ERASURE_CONFIRMED, source=SOURCE, subject=data.customer_id, data=data, time=data.confirmed_at)


def customer_erased(data: CustomerErased) -> Envelope:
    return new_event(type=CUSTOMER_ERASED, source=SOURCE, subject=data.customer_id, data=data, time=data.erased_at)
