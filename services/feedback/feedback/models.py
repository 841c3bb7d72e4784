"""Feedback's tables: feedback, complaints, surveys and the segment memberships it keeps a copy of."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class FeedbackEntry(Base):
    __tablename__ = "feedback_entries"
    # Idempotency: one entry per (customer, client event id); ON CONFLICT makes concurrent posts safe.
    __table_args__ = (
        UniqueConstraint("customer_id", "event_id", name="feedback_entries_customer_event"),
        Index("ix_feedback_entries_kind_occurred_at", "kind", "occurred_at"),
        Index("ix_feedback_entries_occurred_at", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    event_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    score: Mapped[int | None] = mapped_column(SmallInteger)
    text: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[str | None] = mapped_column(String(128))
    sku: Mapped[str | None] = mapped_column(String(128))
    category: Mapped[str | None] = mapped_column(String(64))
    survey_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    question_id: Mapped[str | None] = mapped_column(String(64))
    # The customer's segments when the feedback was given: reports by segment stay stable over time.
    segment_keys: Mapped[list[str]] = mapped_column(ARRAY(String(128)), server_default=sql("'{}'"))
    sentiment_score: Mapped[float | None] = mapped_column(Float)
    sentiment_label: Mapped[str | None] = mapped_column(String(16))
    language: Mapped[str | None] = mapped_column(String(8))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Complaint(Base):
    __tablename__ = "complaints"
    __table_args__ = (Index("ix_complaints_status_category", "status", "category"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    feedback_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("feedback_entries.id"), unique=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    category: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # open, acknowledged, resolved, reopened
    assignee: Mapped[str | None] = mapped_column(String(128))
    resolution_note: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_response_due: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolution_due: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reopened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reopen_count: Mapped[int] = mapped_column(Integer, server_default=sql("0"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SegmentMembership(Base):
    """Feedback's copy of segments.membership.v1: the latest state per (customer, segment) by event time."""

    __tablename__ = "segment_memberships"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    segment_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    segment_id: Mapped[str] = mapped_column(String(128))
    is_member: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Survey(Base):
    __tablename__ = "surveys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(200))
    questions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    segment_keys: Mapped[list[str]] = mapped_column(ARRAY(String(128)), server_default=sql("'{}'"))
    channel: Mapped[str] = mapped_column(String(32))
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    active: Mapped[bool] = mapped_column(Boolean, server_default=sql("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SurveyResponse(Base):
    __tablename__ = "survey_responses"
    # At most one answer per customer and survey, enforced by the database.
    __table_args__ = (UniqueConstraint("survey_id", "customer_id", name="survey_responses_one_per_customer"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    survey_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("surveys.id"))
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SurveyAnswer(Base):
    """One answer per question: scores and texts live in the feedback entry, choices here."""

    __tablename__ = "survey_answers"

    response_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("survey_responses.id"), primary_key=True)
    question_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    choice: Mapped[str | None] = mapped_column(String(200))
    feedback_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("feedback_entries.id"))
