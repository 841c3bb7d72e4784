"""Request and response bodies of the segments API."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field


class RfmRead(BaseModel):
    customer_id: str
    recency_days: int
    frequency: int
    monetary: Decimal
    r_score: int
    f_score: int
    m_score: int
    rfm_segment: str
    as_of: datetime


class PredictionsRead(BaseModel):
    customer_id: str
    p_alive: float
    expected_purchases_90d: float
    clv_365d: Decimal
    model_id: int
    computed_at: datetime


class SegmentCreate(BaseModel):
    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$", description="stable slug, unique")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    rule: dict[str, Any]


class SegmentPatch(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    rule: dict[str, Any] | None = None


class SegmentRead(BaseModel):
    id: str
    key: str
    name: str
    kind: str
    description: str
    rule: dict[str, Any] | None
    status: str
    size: int
    created_at: datetime
    updated_at: datetime


class SegmentList(BaseModel):
    items: list[SegmentRead]


class PreviewRequest(BaseModel):
    rule: dict[str, Any]
    sample_size: int | None = Field(None, ge=0, le=100)


class PreviewRead(BaseModel):
    count: int
    sample: list[str]
    description: str


class MemberRead(BaseModel):
    customer_id: str
    reason: str
    entered_at: datetime


class MembersPage(BaseModel):
    items: list[MemberRead]
    next_after: str | None


class CustomerSegmentRead(BaseModel):
    segment_id: str
    segment_key: str
    segment_name: str
    kind: str
    reason: str
    entered_at: datetime


class CustomerSegments(BaseModel):
    customer_id: str
    segments: list[CustomerSegmentRead]


class ChangeRead(BaseModel):
    id: int
    segment_id: str
    segment_key: str
    customer_id: str
    change: Literal["entered", "exited"]
    reason: str
    occurred_at: datetime


class HistoryPage(BaseModel):
    items: list[ChangeRead]
    next_before: int | None


class SizeRead(BaseModel):
    measured_at: datetime
    size: int
    entered: int
    exited: int


class SizesRead(BaseModel):
    segment_id: str
    size: int
    history: list[SizeRead]


class ClvFitRequest(BaseModel):
    calibration_end: date | None = None
    time_unit: Literal["day", "week"] = "day"


class BgNbdRead(BaseModel):
    r: float
    alpha: float
    a: float
    b: float


class GammaGammaRead(BaseModel):
    p: float
    q: float
    gamma: float


class HoldoutRead(BaseModel):
    predicted_repeat_purchases: float
    actual_repeat_purchases: int
    days: int


class ClvFitRead(BaseModel):
    bgnbd: BgNbdRead
    gamma_gamma: GammaGammaRead | None
    log_likelihood: float
    gamma_gamma_log_likelihood: float | None
    customers: int
    time_unit: str
    calibration_end: date
    holdout: HoldoutRead
    model_id: int
    active: bool


class RecomputeRequest(BaseModel):
    as_of: AwareDatetime | None = None


class RecomputeRead(BaseModel):
    as_of: datetime
    customers: int
    entered: int
    exited: int
    seconds: dict[str, float]
