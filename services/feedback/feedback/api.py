"""Feedback HTTP API: thin routes over service, complaints, surveys and reports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from feedback import complaints, service, surveys
from feedback.config import FeedbackSettings
from feedback.models import Complaint, FeedbackEntry, Survey
from feedback.schemas import (
    AcknowledgeIn,
    ComplaintPage,
    ComplaintRead,
    ComplaintUpdate,
    FeedbackAccepted,
    FeedbackFields,
    FeedbackIn,
    FeedbackKind,
    FeedbackRead,
    MyFeedbackIn,
    ResolveIn,
    SentimentRead,
    SurveyAnswersIn,
    SurveyIn,
    SurveyRead,
    SurveyResponseRead,
    SurveyResults,
    SurveyUpdate,
    feedback_errors,
    survey_errors,
)
from feedback.sentiment import Sentiment
from feedback.service import Submission
from shared.auth import CustomerDep, require_scope
from shared.db import SessionDep
from shared.errors import as_validation_errors

router = APIRouter(prefix="/v1", tags=["feedback"])
WRITE = [Depends(require_scope("feedback:write"))]
READ = [Depends(require_scope("feedback:read"))]
_ACCEPTED_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": FeedbackAccepted, "description": "Already recorded: nothing published again"},
    409: {"description": "The customer was erased after this feedback occurred: not stored"},
}


def _settings(request: Request) -> FeedbackSettings:
    settings: FeedbackSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[FeedbackSettings, Depends(_settings)]


def page_limit(settings: FeedbackSettings, limit: int | None) -> int:
    return min(limit or settings.page_size_default, settings.page_size_max)


def _sentiment_read(sentiment: Sentiment | None) -> SentimentRead | None:
    if sentiment is None:
        return None
    return SentimentRead(score=sentiment.score, label=sentiment.label, language=sentiment.language)


async def _record(
    session: SessionDep, settings: FeedbackSettings, body: FeedbackFields, customer_id: str, response: Response
) -> FeedbackAccepted:
    now = datetime.now(UTC)
    errors = feedback_errors(
        body,
        channels=settings.channels,
        max_text_chars=settings.max_text_chars,
        now=now,
        max_skew=timedelta(seconds=settings.max_future_skew_seconds),
    )
    if errors:
        raise RequestValidationError(as_validation_errors(errors))
    submission = Submission(
        event_id=body.event_id,
        customer_id=customer_id,
        kind=body.kind,
        score=body.score,
        text=body.text,
        channel=body.channel,
        occurred_at=body.occurred_at or now,
        order_id=body.order_id,
        sku=body.sku,
        category=body.category,
    )
    try:
        recorded = await service.record_feedback(session, submission=submission, settings=settings)
    except service.CustomerErased:
        detail = "the customer was erased after this feedback occurred (occurred_at): not stored"
        raise HTTPException(status.HTTP_409_CONFLICT, detail) from None
    if not recorded.created:
        response.status_code = status.HTTP_200_OK
    return FeedbackAccepted(
        status="accepted" if recorded.created else "duplicate",
        event_id=body.event_id,
        feedback_id=recorded.feedback_id,
        sentiment=_sentiment_read(recorded.sentiment),
        complaint_id=recorded.complaint_id,
    )


@router.post(
    "/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackAccepted,
    responses=_ACCEPTED_RESPONSES,
    dependencies=WRITE,
)
async def post_feedback(
    body: FeedbackIn, session: SessionDep, settings: SettingsDep, response: Response
) -> FeedbackAccepted:
    return await _record(session, settings, body, body.customer_id, response)


@router.post(
    "/me/feedback", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackAccepted, responses=_ACCEPTED_RESPONSES
)
async def post_my_feedback(
    body: MyFeedbackIn, customer: CustomerDep, session: SessionDep, settings: SettingsDep, response: Response
) -> FeedbackAccepted:
    if body.customer_id is not None and body.customer_id != customer.customer_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a customer token gives feedback only as its own customer")
    return await _record(session, settings, body, customer.customer_id, response)


def _feedback_read(entry: FeedbackEntry) -> FeedbackRead:
    sentiment = None
    if entry.sentiment_score is not None:
        sentiment = SentimentRead.model_validate(
            {"score": entry.sentiment_score, "label": entry.sentiment_label, "language": entry.language}
        )
    return FeedbackRead.model_validate(
        {**{c: getattr(entry, c) for c in FeedbackRead.model_fields if c != "sentiment"}, "sentiment": sentiment}
    )


@router.get("/feedback/{feedback_id}", response_model=FeedbackRead, dependencies=READ)
async def get_feedback(feedback_id: uuid.UUID, session: SessionDep) -> FeedbackRead:
    entry = await service.get_feedback(session, feedback_id=feedback_id)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "feedback not found")
    return _feedback_read(entry)


@router.get("/feedback", response_model=list[FeedbackRead], dependencies=READ)
async def list_feedback(
    session: SessionDep,
    settings: SettingsDep,
    customer_id: str | None = None,
    kind: FeedbackKind | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[FeedbackRead]:
    entries = await service.list_feedback(
        session, customer_id=customer_id, kind=kind, limit=page_limit(settings, limit), offset=offset
    )
    return [_feedback_read(entry) for entry in entries]


@router.get("/me/feedback", response_model=list[FeedbackRead])
async def list_my_feedback(
    customer: CustomerDep,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[FeedbackRead]:
    entries = await service.list_feedback(
        session, customer_id=customer.customer_id, kind=None, limit=page_limit(settings, limit), offset=offset
    )
    return [_feedback_read(entry) for entry in entries]


@contextmanager
def _complaint_errors() -> Iterator[None]:
    """Unknown complaint → 404; a transition its status does not allow → 409."""
    try:
        yield
    except complaints.ComplaintNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "complaint not found") from error
    except complaints.TransitionRefused as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error


def _complaint_read(complaint: Complaint, now: datetime) -> ComplaintRead:
    reasons = complaints.overdue_reasons(complaint, now)
    fields = {c: getattr(complaint, c) for c in ComplaintRead.model_fields if c not in ("overdue", "overdue_reasons")}
    return ComplaintRead.model_validate(fields | {"overdue": bool(reasons), "overdue_reasons": reasons})


@router.get("/complaints", response_model=ComplaintPage, dependencies=READ)
async def list_complaints(
    session: SessionDep,
    settings: SettingsDep,
    overdue: bool | None = None,
    status_: Annotated[str | None, Query(alias="status")] = None,
    category: str | None = None,
    assignee: str | None = None,
    customer_id: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ComplaintPage:
    now = datetime.now(UTC)
    size = page_limit(settings, limit)
    rows = await complaints.list_complaints(
        session,
        now=now,
        overdue=overdue,
        status=status_,
        category=category,
        assignee=assignee,
        customer_id=customer_id,
        limit=size + 1,
        offset=offset,
    )
    return ComplaintPage(
        items=[_complaint_read(c, now) for c in rows[:size]], next_offset=offset + size if len(rows) > size else None
    )


@router.get("/complaints/{complaint_id}", response_model=ComplaintRead, dependencies=READ)
async def get_complaint(complaint_id: uuid.UUID, session: SessionDep) -> ComplaintRead:
    complaint = await complaints.get_complaint(session, complaint_id=complaint_id)
    if complaint is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "complaint not found")
    return _complaint_read(complaint, datetime.now(UTC))


@router.post("/complaints/{complaint_id}/acknowledge", response_model=ComplaintRead, dependencies=WRITE)
async def acknowledge_complaint(
    complaint_id: uuid.UUID, session: SessionDep, body: AcknowledgeIn | None = None
) -> ComplaintRead:
    now = datetime.now(UTC)
    with _complaint_errors():
        complaint = await complaints.acknowledge(
            session, complaint_id=complaint_id, assignee=body.assignee if body else None, now=now
        )
    return _complaint_read(complaint, now)


@router.post("/complaints/{complaint_id}/resolve", response_model=ComplaintRead, dependencies=WRITE)
async def resolve_complaint(
    complaint_id: uuid.UUID, session: SessionDep, body: ResolveIn | None = None
) -> ComplaintRead:
    now = datetime.now(UTC)
    with _complaint_errors():
        complaint = await complaints.resolve(
            session, complaint_id=complaint_id, note=body.note if body else None, now=now
        )
    return _complaint_read(complaint, now)


@router.post("/complaints/{complaint_id}/reopen", response_model=ComplaintRead, dependencies=WRITE)
async def reopen_complaint(complaint_id: uuid.UUID, session: SessionDep, settings: SettingsDep) -> ComplaintRead:
    now = datetime.now(UTC)
    with _complaint_errors():
        complaint = await complaints.reopen(session, complaint_id=complaint_id, now=now, settings=settings)
    return _complaint_read(complaint, now)


@router.patch("/complaints/{complaint_id}", response_model=ComplaintRead, dependencies=WRITE)
async def update_complaint(complaint_id: uuid.UUID, body: ComplaintUpdate, session: SessionDep) -> ComplaintRead:
    now = datetime.now(UTC)
    with _complaint_errors():
        complaint = await complaints.assign(session, complaint_id=complaint_id, assignee=body.assignee, now=now)
    return _complaint_read(complaint, now)


@router.post("/surveys", status_code=status.HTTP_201_CREATED, response_model=SurveyRead, dependencies=WRITE)
async def create_survey(body: SurveyIn, session: SessionDep, settings: SettingsDep) -> Survey:
    errors = survey_errors(body, channels=settings.channels, max_questions=settings.survey_max_questions)
    if errors:
        raise RequestValidationError(as_validation_errors(errors))
    return await surveys.create_survey(session, survey=body)


@router.get("/surveys", response_model=list[SurveyRead], dependencies=READ)
async def list_surveys(
    session: SessionDep,
    settings: SettingsDep,
    active: bool | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[Survey]:
    return await surveys.list_surveys(session, active=active, limit=page_limit(settings, limit), offset=offset)


@router.get("/surveys/{survey_id}", response_model=SurveyRead, dependencies=READ)
async def get_survey(survey_id: uuid.UUID, session: SessionDep) -> Survey:
    survey = await surveys.get_survey(session, survey_id=survey_id)
    if survey is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "survey not found")
    return survey


@router.patch("/surveys/{survey_id}", response_model=SurveyRead, dependencies=WRITE)
async def update_survey(survey_id: uuid.UUID, body: SurveyUpdate, session: SessionDep) -> Survey:
    try:
        return await surveys.update_survey(session, survey_id=survey_id, changes=body)
    except surveys.SurveyNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "survey not found") from error


@router.get("/surveys/{survey_id}/results", response_model=SurveyResults, dependencies=READ)
async def get_survey_results(survey_id: uuid.UUID, session: SessionDep) -> SurveyResults:
    try:
        return await surveys.survey_results(session, survey_id=survey_id)
    except surveys.SurveyNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "survey not found") from error


@router.get("/me/surveys", response_model=list[SurveyRead])
async def list_my_surveys(customer: CustomerDep, session: SessionDep, channel: str | None = None) -> list[Survey]:
    return await surveys.surveys_for_customer(
        session, customer_id=customer.customer_id, now=datetime.now(UTC), channel=channel
    )


@router.post("/me/surveys/{survey_id}/answers", status_code=status.HTTP_201_CREATED, response_model=SurveyResponseRead)
async def answer_my_survey(
    survey_id: uuid.UUID, body: SurveyAnswersIn, customer: CustomerDep, session: SessionDep, settings: SettingsDep
) -> SurveyResponseRead:
    try:
        return await surveys.answer_survey(
            session,
            survey_id=survey_id,
            customer_id=customer.customer_id,
            answers=body.answers,
            now=datetime.now(UTC),
            settings=settings,
        )
    except surveys.SurveyNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "survey not found") from error
    except surveys.SurveyNotOpen as error:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this survey is not open to this customer now") from error
    except surveys.AlreadyAnswered as error:
        raise HTTPException(status.HTTP_409_CONFLICT, "this customer already answered this survey") from error
    except surveys.AnswersInvalid as error:
        raise RequestValidationError(as_validation_errors(error.errors)) from error
