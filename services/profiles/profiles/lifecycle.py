"""Lifecycle stages from purchase history and the time that has passed (thresholds are settings)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.config import ProfilesSettings
from profiles.models import Customer

STAGES = ("prospect", "new", "active", "repeat", "loyal", "at_risk", "churned")


def lifecycle_stage(settings: ProfilesSettings, now: datetime) -> ColumnElement[Any]:
    """The stage of a customers row at `now`; the first matching rule wins (docs/profiles.md)."""
    return case(
        (Customer.orders <= 0, "prospect"),
        (Customer.last_purchase_at < now - timedelta(days=settings.churned_after_days), "churned"),
        (Customer.last_purchase_at < now - timedelta(days=settings.at_risk_after_days), "at_risk"),
        (Customer.orders >= settings.loyal_min_orders, "loyal"),
        (Customer.orders >= settings.repeat_min_orders, "repeat"),
        (Customer.first_purchase_at >= now - timedelta(days=settings.new_customer_days), "new"),
        else_="active",
    )


async def reevaluate_stages(session: AsyncSession, *, settings: ProfilesSettings, now: datetime) -> int:
    """Move every customer whose stage changed with time (no event needed); they are published next.

    Rows are locked in key order and those the consumer holds are skipped (it marks them dirty,
    and publishing sets their stage): taking them in scan order deadlocked with the consumer.
    """
    stage = lifecycle_stage(settings, now)
    moved = (
        select(Customer.customer_id)
        .where(Customer.lifecycle_stage != stage)
        .order_by(Customer.customer_id)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        update(Customer)
        .where(Customer.customer_id.in_(moved.scalar_subquery()))
        .values(lifecycle_stage=stage, dirty=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
