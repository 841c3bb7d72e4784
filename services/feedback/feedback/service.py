"""Feedback domain operations: record feedback once per event, keep segment memberships, erase a customer.

They never commit: the request or the consumed message does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from feedback import complaints
from feedback.config import FeedbackSettings
from feedback.events import (
    ErasureConfirmed,
    FeedbackSubmitted,
    SentimentData,
    erasure_confirmed,
    feedback_submitted,
)
from feedback.models import Complaint, FeedbackEntry, SegmentMembership, SurveyResponse
from feedback.sentiment import Language, Sentiment, Thresholds, analyse
from shared.db import transaction_connection
from shared.erasure import erased_since, erasures_of, remember_erasure
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import ERASURE_CONFIRMATIONS, FEEDBACK_SUBMISSIONS


@dataclass(frozen=True)
class Submission:
    event_id: str
    customer_id: str
    kind: str
    score: int | None
    text: str | None
    channel: str
    occurred_at: datetime
    order_id: str | None = None
    sku: str | None = None
    category: str | None = None
    survey_id: uuid.UUID | None = None
    question_id: str | None = None


@dataclass(frozen=True)
class Recorded:
    feedback_id: uuid.UUID
    created: bool
    sentiment: Sentiment | None
    complaint_id: uuid.UUID | None


def sentiment_thresholds(settings: FeedbackSettings) -> dict[Language, Thresholds]:
    return {
        "en": Thresholds(settings.sentiment_threshold_en, -settings.sentiment_threshold_en),
        "zh": Thresholds(settings.sentiment_threshold_zh, -settings.sentiment_threshold_zh),
    }


async def text_sentiment(text: str | None, settings: FeedbackSettings) -> Sentiment | None:
    if text is None or not text.strip():
        return None
    # The models are CPU work (and load once, slowly): keep them off the event loop.
    return await asyncio.to_thread(analyse, text, thresholds=sentiment_thresholds(settings))


async def current_segments(session: AsyncSession, *, customer_id: str) -> list[str]:
    rows = await session.execute(
        select(SegmentMembership.segment_key)
        .where(SegmentMembership.customer_id == customer_id, SegmentMembership.is_member)
        .order_by(SegmentMembership.segment_key)
    )
    return list(rows.scalars())


async def _existing(session: AsyncSession, *, customer_id: str, event_id: str) -> Recorded | None:
    row = (
        await session.execute(
            select(FeedbackEntry.id, Complaint.id.label("complaint_id"))
            .outerjoin(Complaint, Complaint.feedback_id == FeedbackEntry.id)
            .where(FeedbackEntry.customer_id == customer_id, FeedbackEntry.event_id == event_id)
        )
    ).first()
    return None if row is None else Recorded(row.id, False, None, row.complaint_id)


class CustomerErased(Exception):
    """The feedback occurred before its customer was erased: storing it would bring the customer back."""


async def record_feedback(session: AsyncSession, *, submission: Submission, settings: FeedbackSettings) -> Recorded:
    """Store the feedback and publish feedback.submitted, once per (customer, event_id)."""
    existing = await _existing(session, customer_id=submission.customer_id, event_id=submission.event_id)
    if existing is not None:
        return existing
    if await erased_since(session, customer_id=submission.customer_id, occurred_at=submission.occurred_at):
        raise CustomerErased(submission.customer_id)
    sentiment = await text_sentiment(submission.text, settings)
    segments = await current_segments(session, customer_id=submission.customer_id)
    category = submission.category or (settings.default_complaint_category if submission.kind == "complaint" else None)
    feedback_id = (
        await session.execute(
            insert(FeedbackEntry)
            .values(
                id=uuid.uuid4(),
                event_id=submission.event_id,
                customer_id=submission.customer_id,
                kind=submission.kind,
                score=submission.score,
                text=submission.text,
                channel=submission.channel,
                order_id=submission.order_id,
                sku=submission.sku,
                category=category,
                survey_id=submission.survey_id,
                question_id=submission.question_id,
                segment_keys=segments,
                sentiment_score=sentiment.score if sentiment else None,
                sentiment_label=sentiment.label if sentiment else None,
                language=sentiment.language if sentiment else None,
                occurred_at=submission.occurred_at,
            )
            # A concurrent post of the same event committed first: answer as a duplicate.
            .on_conflict_do_nothing(constraint="feedback_entries_customer_event")
            .returning(FeedbackEntry.id)
        )
    ).scalar()
    if feedback_id is None:
        duplicate = await _existing(session, customer_id=submission.customer_id, event_id=submission.event_id)
        assert duplicate is not None, "the conflicting row is committed, so it is visible"
        return duplicate
    complaint_id = None
    if submission.kind == "complaint":
        assert category is not None
        complaint = await complaints.open_complaint(
            session,
            feedback_id=feedback_id,
            customer_id=submission.customer_id,
            category=category,
            opened_at=submission.occurred_at,
            settings=settings,
        )
        complaint_id = complaint.id
    await _publish_submitted(session, feedback_id, submission, category, sentiment, settings)
    return Recorded(feedback_id, True, sentiment, complaint_id)


async def _publish_submitted(
    session: AsyncSession,
    feedback_id: uuid.UUID,
    submission: Submission,
    category: str | None,
    sentiment: Sentiment | None,
    settings: FeedbackSettings,
) -> None:
    event = feedback_submitted(
        FeedbackSubmitted(
            feedback_id=str(feedback_id),
            event_id=submission.event_id,
            customer_id=submission.customer_id,
            kind=submission.kind,
            score=submission.score,
            order_id=submission.order_id,
            sku=submission.sku,
            channel=submission.channel,
            sentiment=SentimentData(score=sentiment.score, label=sentiment.label) if sentiment else None,
            occurred_at=submission.occurred_at,
            category=category,
            survey_id=str(submission.survey_id) if submission.survey_id else None,
        )
    )
    await add_to_outbox(
        session,
        [OutgoingMessage(FEEDBACK_SUBMISSIONS, submission.customer_id, event)],
        max_message_bytes=settings.max_message_bytes,
    )


async def get_feedback(session: AsyncSession, *, feedback_id: uuid.UUID) -> FeedbackEntry | None:
    return await session.get(FeedbackEntry, feedback_id)


async def list_feedback(
    session: AsyncSession, *, customer_id: str | None, kind: str | None, limit: int, offset: int
) -> list[FeedbackEntry]:
    query = select(FeedbackEntry).order_by(FeedbackEntry.occurred_at.desc(), FeedbackEntry.id)
    if customer_id is not None:
        query = query.where(FeedbackEntry.customer_id == customer_id)
    if kind is not None:
        query = query.where(FeedbackEntry.kind == kind)
    return list((await session.execute(query.limit(limit).offset(offset))).scalars())


@dataclass(frozen=True)
class MembershipChange:
    customer_id: str
    segment_key: str
    segment_id: str
    is_member: bool
    changed_at: datetime

    def replaces(self, other: MembershipChange) -> bool:
        """The later change wins; at equal times an exit wins, so the order of arrival never decides."""
        return self.changed_at > other.changed_at or (self.changed_at == other.changed_at and not self.is_member)


async def apply_membership(
    session: AsyncSession,
    *,
    customer_id: str,
    segment_key: str,
    segment_id: str,
    is_member: bool,
    changed_at: datetime,
) -> None:
    change = MembershipChange(customer_id, segment_key, segment_id, is_member, changed_at)
    await apply_memberships(session, changes=[change])


async def apply_memberships(session: AsyncSession, *, changes: Sequence[MembershipChange]) -> None:
    """Keep the latest state by event time, so redelivered or reordered events end in the same state.

    A batch takes two statements: the winning change per customer and segment is upserted where it
    is newer than the row held. A change from before the customer's erasure, arriving after it, is
    dropped; an exit after it deletes the row (segments announces the exits an erasure causes, and
    a row recording one would name them again).
    """
    erasures = await erasures_of(session, (change.customer_id for change in changes))
    winners: dict[tuple[str, str], MembershipChange] = {}
    forget: set[tuple[str, str]] = set()
    for change in changes:
        key = (change.customer_id, change.segment_key)
        erased = erasures.get(change.customer_id)
        if erased is not None and change.changed_at <= erased:
            continue
        if erased is not None and not change.is_member:
            forget.add(key)
            continue
        held = winners.get(key)
        if held is None or change.replaces(held):
            winners[key] = change
    if forget:
        await session.execute(
            delete(SegmentMembership).where(
                tuple_(SegmentMembership.customer_id, SegmentMembership.segment_key).in_(sorted(forget))
            )
        )
    if not winners:
        return
    rows = [change for _, change in sorted(winners.items())]
    connection = await transaction_connection(session)
    # Arrays, not a VALUES list: SQLAlchemy compiled a multi-row VALUES again for every batch size
    # (a third of the worker's CPU while segments published). At equal times an exit wins.
    await connection.execute(
        "INSERT INTO segment_memberships (customer_id, segment_key, segment_id, is_member, changed_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::timestamptz[])"
        " ON CONFLICT (customer_id, segment_key) DO UPDATE"
        " SET segment_id = excluded.segment_id, is_member = excluded.is_member, changed_at = excluded.changed_at"
        " WHERE segment_memberships.changed_at < excluded.changed_at"
        " OR (segment_memberships.changed_at = excluded.changed_at AND excluded.is_member IS false)",
        [c.customer_id for c in rows],
        [c.segment_key for c in rows],
        [c.segment_id for c in rows],
        [c.is_member for c in rows],
        [c.changed_at for c in rows],
    )


async def erase_customer(
    session: AsyncSession, *, request_id: str, customer_id: str, requested_at: datetime, now: datetime
) -> str:
    """Forget who gave the feedback and what they wrote; scores, sentiment and segments stay for reports.

    Returns the anonymous token the customer's rows now carry (random: it cannot be traced back).
    """
    token = f"erased-{uuid.uuid4().hex}"
    await remember_erasure(session, customer_id=customer_id, requested_at=requested_at)
    await session.execute(
        update(FeedbackEntry)
        .where(FeedbackEntry.customer_id == customer_id)
        .values(customer_id=token, text=None, order_id=None, erased_at=now)
    )
    await session.execute(
        update(Complaint)
        .where(Complaint.customer_id == customer_id)
        .values(customer_id=token, resolution_note=None, updated_at=now)
    )
    await session.execute(
        update(SurveyResponse).where(SurveyResponse.customer_id == customer_id).values(customer_id=token)
    )
    await session.execute(delete(SegmentMembership).where(SegmentMembership.customer_id == customer_id))
    confirmation = erasure_confirmed(ErasureConfirmed(request_id=request_id, customer_id=customer_id, confirmed_at=now))
    await add_to_outbox(session, [OutgoingMessage(ERASURE_CONFIRMATIONS["feedback"], customer_id, confirmation)])
    return token
