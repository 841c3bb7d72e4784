"""What segments consumes (the parts it needs) and publishes (membership events, built in SQL)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.plain import PLAIN_DECIMAL, plain_time, text_between


class PurchaseCompleted(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=128)
    occurred_at: AwareDatetime
    currency: str = Field(min_length=3, max_length=3)
    total: Decimal


class PurchaseRefunded(BaseModel):
    model_config = ConfigDict(extra="ignore")

    refund_id: str = Field(min_length=1, max_length=200)
    order_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=128)
    occurred_at: AwareDatetime
    amount: Decimal


class ProfileUpdated(BaseModel):
    model_config = ConfigDict(extra="ignore")

    customer_id: str = Field(min_length=1, max_length=128)
    version: int
    occurred_at: AwareDatetime
    profile: dict[str, Any]


# The shapes every producer sends (ingest's purchases, profiles' snapshots) are checked without
# pydantic (shared.plain); anything else goes through the models above, which then decide.


def parse_purchase(data: dict[str, Any]) -> PurchaseCompleted:
    """purchase.completed's data as PurchaseCompleted.model_validate gives it (~1 us instead of ~5 us)."""
    order_id, customer_id, currency, total = (
        data.get("order_id"),
        data.get("customer_id"),
        data.get("currency"),
        data.get("total"),
    )
    at = plain_time(data.get("occurred_at"))
    if (
        at is not None
        and text_between(order_id, 1, 200)
        and text_between(customer_id, 1, 128)
        and text_between(currency, 3, 3)
        and type(total) is str
        and PLAIN_DECIMAL.fullmatch(total)
    ):
        return PurchaseCompleted.model_construct(
            order_id=order_id, customer_id=customer_id, occurred_at=at, currency=currency, total=Decimal(total)
        )
    return PurchaseCompleted.model_validate(data)


def parse_profile(data: dict[str, Any]) -> ProfileUpdated:
    """profile.updated's data as ProfileUpdated.model_validate gives it; the snapshot is kept as sent
    (JSON: str-keyed dicts, lists and scalars, which pydantic's dict[str, Any] keeps as they are)."""
    customer_id, version, profile = data.get("customer_id"), data.get("version"), data.get("profile")
    at = plain_time(data.get("occurred_at"))
    if at is not None and text_between(customer_id, 1, 128) and type(version) is int and type(profile) is dict:
        return ProfileUpdated.model_construct(customer_id=customer_id, version=version, occurred_at=at, profile=profile)
    return ProfileUpdated.model_validate(data)


class ErasureRequested(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str
    customer_id: str = Field(min_length=1, max_length=128)


class SegmentMembershipChanged(BaseModel):
    """The data of segment.entered / segment.exited (documentation of what membership.py builds)."""

    customer_id: str
    segment_id: str
    segment_key: str
    segment_name: str
    kind: str
    reason: str
    occurred_at: AwareDatetime
