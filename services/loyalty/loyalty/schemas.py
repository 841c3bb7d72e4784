"""Request and response bodies of the loyalty API. Requests refuse unknown fields (no mass assignment)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from loyalty.rules import EarningRules


class ExpiringPoints(BaseModel):
    points: int
    expires_at: datetime


class MemberRead(BaseModel):
    customer_id: str
    points: int
    tier: str
    expiring: list[ExpiringPoints]
    updated_at: datetime
    enrolled_at: datetime
    qualifying_points: int = Field(description="points toward tiers in the rolling window")
    next_tier: str | None
    points_to_next_tier: int | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedemptionCreate(_Request):
    points: int = Field(gt=0)
    reason: str = Field(min_length=1, max_length=500)


class AdjustmentCreate(_Request):
    points: int = Field(description="positive credits, negative debits; never 0")
    reason: str = Field(min_length=1, max_length=500)


class MovementRead(BaseModel):
    customer_id: str
    points: int
    reason: str
    balance: int
    entry_id: int
    created_at: datetime


class RedemptionRead(MovementRead):
    redemption_id: str


class AdjustmentRead(MovementRead):
    adjustment_id: str


class TransactionRead(BaseModel):
    entry_id: int
    kind: str
    points: int
    balance_after: int | None
    cause_type: str
    cause_id: str
    reason: str | None
    occurred_at: datetime | None
    created_at: datetime
    expires_at: datetime | None
    remaining: int | None
    shortfall: int


class TransactionPage(BaseModel):
    items: list[TransactionRead]
    next_cursor: str | None


class RulesRead(EarningRules):
    model_config = ConfigDict(extra="ignore")

    version: int = Field(description="0 while the rules come from the file or the defaults")


class CampaignRead(BaseModel):
    id: str
    name: str
    starts_at: datetime
    ends_at: datetime
    multiplier: Decimal
    segment_key: str | None
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(from_attributes=True)
