"""Request and response models; rules that depend on several fields return errors named by field."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from shared.errors import FieldError

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+=#-]*$")
]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Channel = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")]
FeedbackKind = Literal["nps", "csat", "rating", "comment", "complaint"]
QuestionType = Literal["nps", "csat", "rating", "text", "choice"]
ComplaintStatus = Literal["open", "acknowledged", "resolved", "reopened"]

# Score range per kind; None means the kind takes no score.
SCORE_RANGES: dict[str, tuple[int, int] | None] = {
    "nps": (0, 10),
    "csat": (1, 5),
    "rating": (1, 5),
    "comment": None,
    "complaint": None,
}
TEXT_REQUIRED = frozenset({"comment", "complaint"})


class FeedbackFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: EventId
    kind: FeedbackKind
    score: StrictInt | None = None
    text: str | None = None
    channel: Channel
    order_id: Identifier | None = None
    sku: Identifier | None = None
    category: Slug | None = Field(None, description="Complaints only; the service level depends on it")
    occurred_at: AwareDatetime | None = Field(None, description="When it was given; default: now")


class FeedbackIn(FeedbackFields):
    customer_id: Identifier


class MyFeedbackIn(FeedbackFields):
    customer_id: Identifier | None = Field(None, description="Optional; must be the token's customer")


def score_errors(kind: str, score: int | None, field: str = "score") -> list[FieldError]:
    bounds = SCORE_RANGES[kind]
    if bounds is None:
        return [] if score is None else [FieldError(field=field, message=f"{kind} takes no score")]
    if score is None:
        return [FieldError(field=field, message=f"{kind} needs a score", type="missing")]
    low, high = bounds
    if not low <= score <= high:
        return [FieldError(field=field, message=f"{kind} score must be from {low} to {high}")]
    return []


def text_errors(text: str | None, *, required: bool, max_chars: int, field: str = "text") -> list[FieldError]:
    if text is None or not text.strip():
        return [FieldError(field=field, message="text is required", type="missing")] if required else []
    if len(text) > max_chars:
        return [FieldError(field=field, message=f"at most {max_chars} characters")]
    return []


def channel_errors(channel: str, allowed: list[str], field: str = "channel") -> list[FieldError]:
    if channel in allowed:
        return []
    return [FieldError(field=field, message=f"unknown channel; one of {', '.join(allowed)}")]


def feedback_errors(
    body: FeedbackFields, *, channels: list[str], max_text_chars: int, now: datetime, max_skew: timedelta
) -> list[FieldError]:
    errors = score_errors(body.kind, body.score)
    errors += text_errors(body.text, required=body.kind in TEXT_REQUIRED, max_chars=max_text_chars)
    errors += channel_errors(body.channel, channels)
    if body.kind == "rating" and body.sku is None and body.order_id is None:
        errors.append(FieldError(field="sku", message="a rating needs sku or order_id", type="missing"))
    if body.category is not None and body.kind != "complaint":
        errors.append(FieldError(field="category", message="only complaints have a category"))
    if body.occurred_at is not None and body.occurred_at > now + max_skew:
        errors.append(FieldError(field="occurred_at", message=f"is more than {max_skew} in the future"))
    return errors


class SentimentRead(BaseModel):
    score: float = Field(ge=-1, le=1)
    label: Literal["positive", "neutral", "negative"]
    language: Literal["en", "zh"]


class FeedbackAccepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    event_id: str
    feedback_id: uuid.UUID
    sentiment: SentimentRead | None = None
    complaint_id: uuid.UUID | None = None


class FeedbackRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    event_id: str
    customer_id: str
    kind: str
    score: int | None
    text: str | None
    channel: str
    order_id: str | None
    sku: str | None
    category: str | None
    survey_id: uuid.UUID | None
    question_id: str | None
    segment_keys: list[str]
    sentiment: SentimentRead | None
    occurred_at: datetime
    received_at: datetime


class ComplaintRead(BaseModel):
    id: uuid.UUID
    feedback_id: uuid.UUID
    customer_id: str
    category: str
    status: ComplaintStatus
    assignee: str | None
    resolution_note: str | None
    opened_at: datetime
    first_response_due: datetime
    resolution_due: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    reopened_at: datetime | None
    reopen_count: int
    overdue: bool
    overdue_reasons: list[Literal["first_response", "resolution"]]


class ComplaintPage(BaseModel):
    items: list[ComplaintRead]
    next_offset: int | None


class AcknowledgeIn(BaseModel):
    assignee: Identifier | None = None


class ResolveIn(BaseModel):
    note: Annotated[str, StringConstraints(max_length=5000)] | None = None


class ComplaintUpdate(BaseModel):
    assignee: Identifier | None = None


class QuestionIn(BaseModel):
    id: Slug
    text: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    type: QuestionType
    options: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50
    )
    required: bool = True
    sku: Identifier | None = Field(None, description="The product a rating question is about")


class SurveyIn(BaseModel):
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    questions: list[QuestionIn] = Field(min_length=1)
    segment_keys: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list, description="Ask members of any of these segments; empty: every customer"
    )
    channel: Channel
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    active: bool = True


class SurveyUpdate(BaseModel):
    active: bool | None = None
    ends_at: AwareDatetime | None = None


def survey_errors(survey: SurveyIn, *, channels: list[str], max_questions: int) -> list[FieldError]:
    errors = channel_errors(survey.channel, channels)
    if len(survey.questions) > max_questions:
        errors.append(FieldError(field="questions", message=f"at most {max_questions} questions"))
    seen: set[str] = set()
    for i, question in enumerate(survey.questions):
        if question.id in seen:
            errors.append(FieldError(field=f"questions.{i}.id", message="question ids must be unique"))
        seen.add(question.id)
        if question.type == "choice" and len(question.options) < 2:
            errors.append(FieldError(field=f"questions.{i}.options", message="a choice question needs 2+ options"))
        if question.type != "choice" and question.options:
            errors.append(FieldError(field=f"questions.{i}.options", message="only choice questions have options"))
        if question.type == "rating" and question.sku is None:
            errors.append(FieldError(field=f"questions.{i}.sku", message="a rating question names its sku"))
    if survey.starts_at and survey.ends_at and survey.ends_at <= survey.starts_at:
        errors.append(FieldError(field="ends_at", message="must be after starts_at"))
    return errors


class SurveyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    questions: list[QuestionIn]
    segment_keys: list[str]
    channel: str
    starts_at: datetime | None
    ends_at: datetime | None
    active: bool
    created_at: datetime


class AnswerIn(BaseModel):
    question_id: Slug
    score: StrictInt | None = None
    text: str | None = None
    choice: str | None = None


class SurveyAnswersIn(BaseModel):
    answers: list[AnswerIn] = Field(min_length=1, max_length=100)


class SurveyResponseRead(BaseModel):
    response_id: uuid.UUID
    survey_id: uuid.UUID
    submitted_at: datetime
    answers: int


class QuestionResult(BaseModel):
    question_id: str
    type: str
    answers: int
    average_score: float | None = None
    choices: dict[str, int] | None = None
    average_sentiment: float | None = None


class SurveyResults(BaseModel):
    survey_id: uuid.UUID
    responses: int
    questions: list[QuestionResult]


class NpsRow(BaseModel):
    period_start: date | None
    group: str | None
    responses: int
    promoters: int
    passives: int
    detractors: int
    nps: float | None = Field(description="% promoters (9-10) - % detractors (0-6)")


class CsatRow(BaseModel):
    period_start: date | None
    group: str | None
    responses: int
    satisfied: int
    csat: float | None = Field(description="% of answers scoring 4 or 5")
    average: float | None


class SentimentRow(BaseModel):
    period_start: date
    group: str | None
    texts: int
    average: float
    positive: int
    neutral: int
    negative: int


class RatingRow(BaseModel):
    sku: str
    ratings: int
    average: float
    stars_1: int
    stars_2: int
    stars_3: int
    stars_4: int
    stars_5: int


class ComplaintCategoryRow(BaseModel):
    category: str
    complaints: int
    unresolved: int
    overdue: int
    resolved: int
    resolved_within_sla: int
    resolved_within_sla_pct: float | None
    average_resolution_hours: float | None


class ReportWindow(BaseModel):
    start: datetime
    end: datetime


class NpsReport(BaseModel):
    window: ReportWindow
    period: str
    group_by: str | None
    rows: list[NpsRow]
    total: NpsRow


class CsatReport(BaseModel):
    window: ReportWindow
    period: str
    group_by: str | None
    rows: list[CsatRow]
    total: CsatRow


class SentimentReport(BaseModel):
    window: ReportWindow
    period: str
    group_by: str | None
    rows: list[SentimentRow]


class RatingsReport(BaseModel):
    window: ReportWindow
    rows: list[RatingRow]


class ComplaintCategoriesReport(BaseModel):
    window: ReportWindow
    rows: list[ComplaintCategoryRow]
