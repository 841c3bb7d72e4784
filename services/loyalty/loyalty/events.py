"""What loyalty consumes (purchase data) and publishes (points events on loyalty.accounts.v1)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from shared.envelope import Envelope, new_event

SOURCE = "cx.loyalty"
POINTS_EARNED = "points.earned"


class PurchaseCompleted(BaseModel):
    """The part of ingest's purchase.completed data loyalty needs."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    customer_id: str
    currency: str
    total: Decimal
    occurred_at: AwareDatetime


class PointsEarned(BaseModel):
    customer_id: str
    points: int
    balance: int
    cause_type: str
    cause_id: str
    entry_id: int
    occurred_at: datetime


def points_earned(data: PointsEarned) -> Envelope:
    return new_event(type=POINTS_EARNED, source=SOURCE, subject=data.customer_id, data=data)
