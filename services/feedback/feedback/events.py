"""What feedback consumes (segment membership, erasure requests) and publishes (feedback.submissions.v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.envelope import Envelope, new_event

SOURCE = "cx.feedback"
FEEDBACK_SUBMITTED = "feedback.submitted"
COMPLAINT_OPENED = "complaint.opened"
COMPLAINT_RESOLVED = "complaint.resolved"
ERASURE_CONFIRMED = "erasure.confirmed"


class SegmentChanged(BaseModel):
    """segment.entered / segment.exited data (contract, section Kafka topics)."""

    model_config = ConfigDict(extra="ignore")

    customer_id: str = Field(min_length=1, max_length=128)
    segment_id: str = Field(min_length=1, max_length=128)
    segment_key: str = Field(min_length=1, max_length=128)
    occurred_at: AwareDatetime


class ErasureRequested(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1, max_length=128)
    requested_at: AwareDatetime


class SentimentData(BaseModel):
    score: float
    label: str


class FeedbackSubmitted(BaseModel):
    """No free text: it may hold personal data, and consumers only need scores and sentiment."""

    feedback_id: str
    event_id: str
    customer_id: str
    kind: str
    score: int | None
    order_id: str | None
    sku: str | None
    channel: str
    sentiment: SentimentData | None
    occurred_at: datetime
    category: str | None = None
    survey_id: str | None = None


class ComplaintOpened(BaseModel):
    complaint_id: str
    customer_id: str
    category: str
    opened_at: datetime
    first_response_due: datetime
    resolution_due: datetime
    feedback_id: str


class ComplaintResolved(BaseModel):
    complaint_id: str
    customer_id: str
    category: str
    resolved_at: datetime
    within_sla: bool
    first_response_within_sla: bool


class ErasureConfirmed(BaseModel):
    request_id: str
    customer_id: str
    service: Literal["feedback"] = "feedback"
    confirmed_at: datetime


def feedback_submitted(data: FeedbackSubmitted) -> Envelope:
    return new_event(type=FEEDBACK_SUBMITTED, source=SOURCE, subject=data.customer_id, data=data, time=data.occurred_at)


def complaint_opened(data: ComplaintOpened) -> Envelope:
    return new_event(type=COMPLAINT_OPENED, source=SOURCE, subject=data.customer_id, data=data, time=data.opened_at)


def complaint_resolved(data: ComplaintResolved) -> Envelope:
    return new_event(type=COMPLAINT_RESOLVED, source=SOURCE, subject=data.customer_id, data=data, time=data.resolved_at)


def erasure_confirmed(data: ErasureConfirmed) -> Envelope:
    return new_event(type=ERASURE_CONFIRMED, source=SOURCE, subject=data.customer_id, data=data, time=data.confirmed_at)
