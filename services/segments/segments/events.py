"""What segments consumes (the parts it needs) and publishes (membership events, built in SQL)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


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
