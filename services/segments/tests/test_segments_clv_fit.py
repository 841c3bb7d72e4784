"""POST /v1/models/clv/fit's work on real orders: units, same-day purchases, holdout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from segments import service
from segments.config import SegmentsSettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.testing import TestPlatform, rollback_session

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CALIBRATION_DAYS, HOLDOUT_DAYS = 365, 182
TRUE = {"r": 0.6, "alpha_days": 35.0, "a": 0.8, "b": 2.5}


def simulate_orders(customers: int, seed: int) -> list[tuple[str, float]]:
    """(customer, day) of every purchase of a BG/NBD population over calibration and holdout."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(TRUE["r"], 1.0 / TRUE["alpha_days"], customers)
    dropout = rng.beta(TRUE["a"], TRUE["b"], customers)
    clock = rng.uniform(0, 180, customers)  # first purchases over the first half year
    orders = [(f"clv-{i}", float(clock[i])) for i in range(customers)]
    alive = np.ones(customers, dtype=bool)
    end = CALIBRATION_DAYS + HOLDOUT_DAYS
    while alive.any():
        clock[alive] += rng.exponential(1.0 / rate[alive])
        alive &= clock < end
        orders.extend((f"clv-{i}", float(clock[i])) for i in np.flatnonzero(alive))
        alive &= rng.random(customers) >= dropout
    return orders


async def load(session: AsyncSession, orders: list[tuple[str, float]]) -> None:
    await session.execute(text("DELETE FROM orders"))
    await session.execute(text("DELETE FROM refunds"))
    await session.execute(
        text(
            "INSERT INTO orders (order_id, customer_id, occurred_at, amount, currency)"
            " SELECT 'o-' || n, c, CAST(:start AS timestamptz) + d * interval '1 day', 10 + (n % 40), 'USD'"
            " FROM unnest(CAST(:customers AS text[]), CAST(:days AS float8[])) WITH ORDINALITY AS u(c, d, n)"
        ),
        {"start": START, "customers": [c for c, _ in orders], "days": [d for _, d in orders]},
    )


async def test_fit_recovers_parameters_in_weeks_and_predicts_the_holdout(platform: TestPlatform) -> None:
    settings = SegmentsSettings()
    orders = simulate_orders(6000, seed=4)
    end = (START + timedelta(days=CALIBRATION_DAYS)).date()
    async with rollback_session(platform.engine("segments")) as session:
        await load(session, orders)
        weeks = await service.fit_clv(session, calibration_end=end, time_unit="week", settings=settings)
        days = await service.fit_clv(session, calibration_end=end, time_unit="day", settings=settings)
        # Several orders on one day are one purchase occasion: adding same-day copies changes nothing.
        copies = [(c, d) for c, d in orders[: len(orders) // 3]]
        await load(session, orders + copies)
        with_copies = await service.fit_clv(session, calibration_end=end, time_unit="week", settings=settings)
    assert weeks is not None and days is not None and with_copies is not None
    assert weeks.bgnbd.r == pytest.approx(TRUE["r"], rel=0.25)
    assert weeks.bgnbd.alpha == pytest.approx(TRUE["alpha_days"] / 7, rel=0.3)
    assert days.bgnbd.alpha == pytest.approx(weeks.bgnbd.alpha * 7, rel=0.02)
    assert days.bgnbd.r == pytest.approx(weeks.bgnbd.r, rel=0.02)
    assert weeks.customers == 6000
    assert HOLDOUT_DAYS - 2 <= weeks.holdout_days <= HOLDOUT_DAYS
    assert weeks.predicted_repeat_purchases == pytest.approx(weeks.actual_repeat_purchases, rel=0.15)
    assert with_copies.bgnbd == weeks.bgnbd
    assert with_copies.actual_repeat_purchases == weeks.actual_repeat_purchases


async def test_fit_without_calibration_end_uses_all_data_and_becomes_active(platform: TestPlatform) -> None:
    settings = SegmentsSettings()
    async with rollback_session(platform.engine("segments")) as session:
        await load(session, simulate_orders(800, seed=9))
        fit = await service.fit_clv(session, calibration_end=None, time_unit="day", settings=settings)
        assert fit is not None
        assert (fit.holdout_days, fit.predicted_repeat_purchases, fit.actual_repeat_purchases) == (0, 0.0, 0)
        assert fit.calibration_end == datetime.now(UTC).date()
        active = await service.active_clv_model(session)
        assert active is not None and active.id == fit.model_id
