"""Surveys: defined by staff, asked to customers in their target segments, answered once per customer.

Score and text answers are recorded as feedback (so they count in reports and publish
feedback.submitted); choice answers are stored on the answer row.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from feedback.config import FeedbackSettings
from feedback.models import FeedbackEntry, SegmentMembership, Survey, SurveyAnswer, SurveyResponse
from feedback.schemas import (
    AnswerIn,
    QuestionIn,
    QuestionResult,
    SurveyIn,
    SurveyResponseRead,
    SurveyResults,
    SurveyUpdate,
    score_errors,
    text_errors,
)
from feedback.service import Submission, record_feedback
from shared.errors import FieldError

# The feedback kind a question's answer is recorded as; choice answers are not feedback.
FEEDBACK_KIND = {"nps": "nps", "csat": "csat", "rating": "rating", "text": "comment"}


class SurveyNotFound(LookupError):
    pass


class SurveyNotOpen(Exception):
    """Not active now, or not meant for this customer (HTTP 403)."""


class AlreadyAnswered(Exception):
    """This customer answered this survey before (HTTP 409)."""


class AnswersInvalid(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("invalid answers")
        self.errors = errors


async def create_survey(session: AsyncSession, *, survey: SurveyIn) -> Survey:
    row = Survey(
        id=uuid.uuid4(),
        title=survey.title,
        questions=[question.model_dump(mode="json") for question in survey.questions],
        segment_keys=sorted(set(survey.segment_keys)),
        channel=survey.channel,
        starts_at=survey.starts_at,
        ends_at=survey.ends_at,
        active=survey.active,
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row


async def update_survey(session: AsyncSession, *, survey_id: uuid.UUID, changes: SurveyUpdate) -> Survey:
    survey = await session.get(Survey, survey_id, with_for_update=True)
    if survey is None:
        raise SurveyNotFound(str(survey_id))
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(survey, field, value)
    await session.flush()
    return survey


async def get_survey(session: AsyncSession, *, survey_id: uuid.UUID) -> Survey | None:
    return await session.get(Survey, survey_id)


async def list_surveys(session: AsyncSession, *, active: bool | None, limit: int, offset: int) -> list[Survey]:
    query = select(Survey).order_by(Survey.created_at.desc(), Survey.id)
    if active is not None:
        query = query.where(Survey.active.is_(active))
    return list((await session.execute(query.limit(limit).offset(offset))).scalars())


def _open_to(customer_id: str, now: datetime) -> Select[Survey]:
    """Surveys to ask this customer now: active, in their window, targeted at them, not yet answered."""
    in_target_segment = exists().where(
        SegmentMembership.customer_id == customer_id,
        SegmentMembership.is_member,
        SegmentMembership.segment_key == func.any(Survey.segment_keys),
    )
    answered = exists().where(SurveyResponse.survey_id == Survey.id, SurveyResponse.customer_id == customer_id)
    return select(Survey).where(
        Survey.active,
        or_(Survey.starts_at.is_(None), Survey.starts_at <= now),
        or_(Survey.ends_at.is_(None), Survey.ends_at > now),
        or_(func.cardinality(Survey.segment_keys) == 0, in_target_segment),
        ~answered,
    )


async def surveys_for_customer(
    session: AsyncSession, *, customer_id: str, now: datetime, channel: str | None
) -> list[Survey]:
    query = _open_to(customer_id, now).order_by(Survey.created_at, Survey.id)
    if channel is not None:
        query = query.where(Survey.channel == channel)
    return list((await session.execute(query)).scalars())


def answer_errors(questions: list[QuestionIn], answers: list[AnswerIn], *, max_text_chars: int) -> list[FieldError]:
    by_id = {question.id: question for question in questions}
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, answer in enumerate(answers):
        question = by_id.get(answer.question_id)
        if question is None:
            errors.append(FieldError(field=f"answers.{i}.question_id", message="no such question in this survey"))
            continue
        if answer.question_id in seen:
            errors.append(FieldError(field=f"answers.{i}.question_id", message="answered twice"))
        seen.add(answer.question_id)
        errors += _answer_errors(question, answer, f"answers.{i}", max_text_chars)
    missing = [q.id for q in questions if q.required and q.id not in seen]
    if missing:
        errors.append(FieldError(field="answers", message=f"required questions unanswered: {', '.join(missing)}"))
    return errors


def _answer_errors(question: QuestionIn, answer: AnswerIn, prefix: str, max_text_chars: int) -> list[FieldError]:
    if question.type == "choice":
        if answer.choice not in question.options:
            return [FieldError(field=f"{prefix}.choice", message=f"one of {', '.join(question.options)}")]
        return []
    kind = FEEDBACK_KIND[question.type]
    errors = score_errors(kind, answer.score, f"{prefix}.score")
    errors += text_errors(answer.text, required=kind == "comment", max_chars=max_text_chars, field=f"{prefix}.text")
    return errors


async def answer_survey(
    session: AsyncSession,
    *,
    survey_id: uuid.UUID,
    customer_id: str,
    answers: list[AnswerIn],
    now: datetime,
    settings: FeedbackSettings,
) -> SurveyResponseRead:
    if await session.get(Survey, survey_id) is None:
        raise SurveyNotFound(str(survey_id))
    answered = select(SurveyResponse.id).where(
        SurveyResponse.survey_id == survey_id, SurveyResponse.customer_id == customer_id
    )
    if (await session.execute(answered)).first() is not None:
        raise AlreadyAnswered(str(survey_id))
    survey = (await session.execute(_open_to(customer_id, now).where(Survey.id == survey_id))).scalar_one_or_none()
    if survey is None:
        raise SurveyNotOpen(str(survey_id))
    questions = [QuestionIn.model_validate(q) for q in survey.questions]
    errors = answer_errors(questions, answers, max_text_chars=settings.max_text_chars)
    if errors:
        raise AnswersInvalid(errors)
    response_id = (
        await session.execute(
            insert(SurveyResponse)
            .values(id=uuid.uuid4(), survey_id=survey_id, customer_id=customer_id, submitted_at=now)
            .on_conflict_do_nothing(constraint="survey_responses_one_per_customer")
            .returning(SurveyResponse.id)
        )
    ).scalar()
    if response_id is None:
        raise AlreadyAnswered(str(survey_id))
    by_id = {question.id: question for question in questions}
    for answer in answers:
        question = by_id[answer.question_id]
        feedback_id = None
        if question.type != "choice":
            submission = Submission(
                event_id=f"survey:{survey_id}:{question.id}",
                customer_id=customer_id,
                kind=FEEDBACK_KIND[question.type],
                score=answer.score,
                text=answer.text,
                channel=survey.channel,
                occurred_at=now,
                sku=question.sku,
                survey_id=survey_id,
                question_id=question.id,
            )
            feedback_id = (await record_feedback(session, submission=submission, settings=settings)).feedback_id
        session.add(
            SurveyAnswer(
                response_id=response_id, question_id=question.id, choice=answer.choice, feedback_id=feedback_id
            )
        )
    await session.flush()
    return SurveyResponseRead(response_id=response_id, survey_id=survey_id, submitted_at=now, answers=len(answers))


async def survey_results(session: AsyncSession, *, survey_id: uuid.UUID) -> SurveyResults:
    survey = await session.get(Survey, survey_id)
    if survey is None:
        raise SurveyNotFound(str(survey_id))
    responses = (await session.execute(select(func.count()).where(SurveyResponse.survey_id == survey_id))).scalar_one()
    rows = await session.execute(
        select(
            SurveyAnswer.question_id,
            SurveyAnswer.choice,
            func.count().label("answers"),
            func.avg(FeedbackEntry.score).label("average_score"),
            func.avg(FeedbackEntry.sentiment_score).label("average_sentiment"),
        )
        .join(SurveyResponse, SurveyResponse.id == SurveyAnswer.response_id)
        .outerjoin(FeedbackEntry, FeedbackEntry.id == SurveyAnswer.feedback_id)
        .where(SurveyResponse.survey_id == survey_id)
        .group_by(SurveyAnswer.question_id, SurveyAnswer.choice)
    )
    results = {q["id"]: QuestionResult(question_id=q["id"], type=q["type"], answers=0) for q in survey.questions}
    for row in rows:
        result = results.get(row.question_id)
        if result is None:
            continue
        result.answers += row.answers
        if result.type == "choice":
            result.choices = (result.choices or {}) | {row.choice: row.answers}
        else:
            result.average_score = None if row.average_score is None else round(float(row.average_score), 2)
            result.average_sentiment = None if row.average_sentiment is None else round(float(row.average_sentiment), 4)
    return SurveyResults(survey_id=survey_id, responses=responses, questions=list(results.values()))
