"""Lifecycle stages from purchase history and the time that has passed (thresholds are settings)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, update
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
    """Move every customer whose stage changed with time (no event needed); they are published next."""
    stage = lifecycle_stage(settings, now)
    result = await session.execute(
        update(Customer)
        .where(Customer.lifecycle_stage != stage)
        .values(lifecycle_stage=stage, dirty=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
