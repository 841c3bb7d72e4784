"""Loyalty domain operations. They never commit: the request or the consumed message does."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from loyalty.events import PointsEarned, points_earned
from loyalty.models import LedgerEntry, Member
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import LOYALTY_ACCOUNTS


def points_for_amount(amount: Decimal, points_per_unit: int) -> int:
    """Whole currency units only: 19.99 earns 19 points at one point per unit (rounded down)."""
    return int((amount * points_per_unit).to_integral_value(rounding=ROUND_FLOOR)) if amount > 0 else 0


async def enroll(session: AsyncSession, *, customer_id: str) -> None:
    await session.execute(insert(Member).values(customer_id=customer_id).on_conflict_do_nothing())


async def earn(
    session: AsyncSession,
    *,
    customer_id: str,
    points: int,
    cause_type: str,
    cause_id: str,
    occurred_at: datetime,
) -> int | None:
    """Credit points once per cause; returns the new balance, or None if this cause already earned."""
    await enroll(session, customer_id=customer_id)
    if points <= 0:
        return None
    entry_id = (
        await session.execute(
            insert(LedgerEntry)
            .values(customer_id=customer_id, kind="earn", points=points, cause_type=cause_type, cause_id=cause_id)
            .on_conflict_do_nothing(constraint="ledger_entries_one_per_cause")
            .returning(LedgerEntry.id)
        )
    ).scalar()
    if entry_id is None:
        return None
    balance = (
        await session.execute(
            update(Member)
            .where(Member.customer_id == customer_id)
            .values(points=Member.points + points, updated_at=datetime.now(UTC))
            .returning(Member.points)
        )
    ).scalar_one()
    event = points_earned(
        PointsEarned(
            customer_id=customer_id,
            points=points,
            balance=balance,
            cause_type=cause_type,
            cause_id=cause_id,
            entry_id=entry_id,
            occurred_at=occurred_at,
        )
    )
    await add_to_outbox(session, [OutgoingMessage(LOYALTY_ACCOUNTS, customer_id, event)])
    return int(balance)


async def get_member(session: AsyncSession, *, customer_id: str) -> Member | None:
    return (await session.execute(select(Member).where(Member.customer_id == customer_id))).scalar_one_or_none()
