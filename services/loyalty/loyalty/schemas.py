from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class ExpiringPoints(BaseModel):
    points: int
    expires_at: datetime


class MemberRead(BaseModel):
    customer_id: str
    points: int
    tier: str
    expiring: list[ExpiringPoints]
    updated_at: datetime
