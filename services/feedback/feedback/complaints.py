"""Complaints: open → acknowledged → resolved (or reopened), with service-level targets per category.

Overdue is computed when asked, from the due times stored at opening (or reopening).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from feedback.config import FeedbackSettings, ServiceLevel
from feedback.events import ComplaintOpened, ComplaintResolved, complaint_opened, complaint_resolved
from feedback.models import Complaint
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import FEEDBACK_SUBMISSIONS

OPEN_STATES = ("open", "acknowledged", "reopened")


class ComplaintNotFound(LookupError):
    pass


class TransitionRefused(Exception):
    """The complaint's status does not allow this transition (HTTP 409)."""


def service_level(settings: FeedbackSettings, category: str) -> ServiceLevel:
    return settings.complaint_service_levels.get(category, settings.default_service_level)


async def open_complaint(
    session: AsyncSession,
    *,
    feedback_id: uuid.UUID,
    customer_id: str,
    category: str,
    opened_at: datetime,
    settings: FeedbackSettings,
) -> Complaint:
    level = service_level(settings, category)
    complaint = Complaint(
        id=uuid.uuid4(),
        feedback_id=feedback_id,
        customer_id=customer_id,
        category=category,
        status="open",
        opened_at=opened_at,
        first_response_due=opened_at + timedelta(hours=level.first_response_hours),
        resolution_due=opened_at + timedelta(hours=level.resolution_hours),
        reopen_count=0,
        updated_at=opened_at,
    )
    session.add(complaint)
    await session.flush()
    event = complaint_opened(
        ComplaintOpened(
            complaint_id=str(complaint.id),
            customer_id=customer_id,
            category=category,
            opened_at=opened_at,
            first_response_due=complaint.first_response_due,
            resolution_due=complaint.resolution_due,
            feedback_id=str(feedback_id),
        )
    )
    await add_to_outbox(session, [OutgoingMessage(FEEDBACK_SUBMISSIONS, customer_id, event)])
    return complaint


def overdue_condition(now: datetime) -> ColumnElement[bool]:
    """Not resolved, and past its first-response target without a response, or past its resolution target."""
    return and_(
        Complaint.status != "resolved",
        or_(
            and_(Complaint.acknowledged_at.is_(None), Complaint.first_response_due < now),
            Complaint.resolution_due < now,
        ),
    )


def overdue_reasons(complaint: Complaint, now: datetime) -> list[str]:
    if complaint.status == "resolved":
        return []
    reasons = []
    if complaint.acknowledged_at is None and now > complaint.first_response_due:
        reasons.append("first_response")
    if now > complaint.resolution_due:
        reasons.append("resolution")
    return reasons


async def _locked(session: AsyncSession, complaint_id: uuid.UUID) -> Complaint:
    complaint = (
        await session.execute(select(Complaint).where(Complaint.id == complaint_id).with_for_update())
    ).scalar_one_or_none()
    if complaint is None:
        raise ComplaintNotFound(str(complaint_id))
    return complaint


async def get_complaint(session: AsyncSession, *, complaint_id: uuid.UUID) -> Complaint | None:
    return await session.get(Complaint, complaint_id)


async def acknowledge(
    session: AsyncSession, *, complaint_id: uuid.UUID, assignee: str | None, now: datetime
) -> Complaint:
    """The first response: open or reopened → acknowledged. Acknowledging again only changes the assignee."""
    complaint = await _locked(session, complaint_id)
    if complaint.status == "resolved":
        raise TransitionRefused("a resolved complaint is reopened, not acknowledged")
    if complaint.status != "acknowledged":
        complaint.status = "acknowledged"
        complaint.acknowledged_at = complaint.acknowledged_at or now
    if assignee is not None:
        complaint.assignee = assignee
    complaint.updated_at = now
    return complaint


async def resolve(session: AsyncSession, *, complaint_id: uuid.UUID, note: str | None, now: datetime) -> Complaint:
    """Any open state → resolved, publishing complaint.resolved; resolving again changes nothing."""
    complaint = await _locked(session, complaint_id)
    if complaint.status == "resolved":
        return complaint
    complaint.status = "resolved"
    complaint.resolved_at = now
    # Resolving without a separate acknowledgement is the first response too.
    complaint.acknowledged_at = complaint.acknowledged_at or now
    complaint.resolution_note = note
    complaint.updated_at = now
    event = complaint_resolved(
        ComplaintResolved(
            complaint_id=str(complaint.id),
            customer_id=complaint.customer_id,
            category=complaint.category,
            resolved_at=now,
            within_sla=now <= complaint.resolution_due,
            first_response_within_sla=complaint.acknowledged_at <= complaint.first_response_due,
        )
    )
    await add_to_outbox(session, [OutgoingMessage(FEEDBACK_SUBMISSIONS, complaint.customer_id, event)])
    return complaint


async def reopen(
    session: AsyncSession, *, complaint_id: uuid.UUID, now: datetime, settings: FeedbackSettings
) -> Complaint:
    """resolved → reopened, with a fresh resolution target from now; reopening again changes nothing."""
    complaint = await _locked(session, complaint_id)
    if complaint.status == "reopened":
        return complaint
    if complaint.status != "resolved":
        raise TransitionRefused(f"only a resolved complaint can be reopened (it is {complaint.status})")
    complaint.status = "reopened"
    complaint.reopened_at = now
    complaint.reopen_count += 1
    complaint.resolved_at = None
    complaint.resolution_due = now + timedelta(hours=service_level(settings, complaint.category).resolution_hours)
    complaint.updated_at = now
    return complaint


async def assign(session: AsyncSession, *, complaint_id: uuid.UUID, assignee: str | None, now: datetime) -> Complaint:
    complaint = await _locked(session, complaint_id)
    complaint.assignee = assignee
    complaint.updated_at = now
    return complaint


async def list_complaints(
    session: AsyncSession,
    *,
    now: datetime,
    overdue: bool | None = None,
    status: str | None = None,
    category: str | None = None,
    assignee: str | None = None,
    customer_id: str | None = None,
    limit: int,
    offset: int,
) -> list[Complaint]:
    query = select(Complaint).order_by(Complaint.opened_at, Complaint.id)
    if overdue is not None:
        query = query.where(overdue_condition(now) if overdue else not_(overdue_condition(now)))
    for column, value in (
        (Complaint.status, status),
        (Complaint.category, category),
        (Complaint.assignee, assignee),
        (Complaint.customer_id, customer_id),
    ):
        if value is not None:
            query = query.where(column == value)
    rows = await session.execute(query.limit(limit).offset(offset))
    return list(rows.scalars())
