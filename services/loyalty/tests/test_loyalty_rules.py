"""Earning rules as pure functions: rounding, rates, multipliers, refunds, tiers, dates."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from loyalty.events import PurchaseCompleted, PurchaseRefunded
from loyalty.rules import EarningRules, TierRule, purchase_earning, refund_raw_points
from loyalty.service import add_months
from pydantic import ValidationError

AT = datetime(2026, 3, 1, tzinfo=UTC)


def purchase(items: list[dict[str, Any]], currency: str = "USD") -> PurchaseCompleted:
    total = sum((Decimal(i["unit_price"]) * i["quantity"] for i in items), Decimal(0))
    return PurchaseCompleted(order_id="o", customer_id="c", currency=currency, total=total, occurred_at=AT, items=items)


def test_points_are_rounded_down_once_per_order_not_per_line() -> None:
    basket = purchase([{"sku": f"S{n}", "quantity": 1, "unit_price": "0.99"} for n in range(10)])
    earned = purchase_earning(basket, EarningRules(), tier="bronze", campaign_multiplier=Decimal(1))
    assert (earned.raw_points, earned.points) == (Decimal("9.90"), 9)


def test_currency_rate_category_tier_and_campaign_multiply() -> None:
    rules = EarningRules(
        base_rates={"default": Decimal(1), "JPY": Decimal("0.01")}, category_multipliers={"tea": Decimal(2)}
    )
    order = purchase([{"sku": "T", "category": "tea", "quantity": 2, "unit_price": "1000"}], currency="JPY")
    earned = purchase_earning(order, rules, tier="gold", campaign_multiplier=Decimal(2))
    assert earned.points == 120  # 2000 x 0.01 x 2 (tea) x 1.5 (gold) x 2 (campaign)
    assert Decimal(earned.unit_points["T"]) == 60


def test_order_without_items_earns_on_its_total() -> None:
    order = PurchaseCompleted(order_id="o", customer_id="c", currency="EUR", total=Decimal("19.99"), occurred_at=AT)
    assert purchase_earning(order, EarningRules(), tier="bronze", campaign_multiplier=Decimal(1)).points == 19


def refund(amount: str, items: list[dict[str, Any]] | None = None) -> PurchaseRefunded:
    return PurchaseRefunded(
        refund_id="r", order_id="o", customer_id="c", currency="USD", occurred_at=AT, items=items, amount=amount
    )


def test_refund_reverses_by_line_when_items_are_named_else_by_amount() -> None:
    unit_points = {"A": "5", "B": "2.5"}
    by_items = refund("10.00", [{"sku": "A", "quantity": 2}])
    assert (
        refund_raw_points(by_items, order_total=Decimal(20), order_raw_points=Decimal(40), unit_points=unit_points)
        == 10
    )
    assert (
        refund_raw_points(refund("5.00"), order_total=Decimal(20), order_raw_points=Decimal(40), unit_points={}) == 10
    )
    too_much = refund("50.00")
    assert refund_raw_points(too_much, order_total=Decimal(20), order_raw_points=Decimal(40), unit_points={}) == 40


def test_tiers_must_start_at_zero_and_increase() -> None:
    with pytest.raises(ValidationError):
        EarningRules(tiers=[TierRule(name="a", threshold=0), TierRule(name="b", threshold=0)])
    with pytest.raises(ValidationError):
        EarningRules(base_rates={"XXX1": Decimal(1)})
    rules = EarningRules()
    assert [rules.tier_for(points).name for points in (0, 999, 1000, 15000)] == [
        "bronze",
        "bronze",
        "silver",
        "platinum",
    ]
    assert rules.next_tier("platinum") is None


def test_months_are_added_calendar_wise() -> None:
    assert add_months(datetime(2026, 1, 31, 12, tzinfo=UTC), 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert add_months(datetime(2026, 3, 15, tzinfo=UTC), -12) == datetime(2025, 3, 15, tzinfo=UTC)
    assert add_months(datetime(2026, 12, 1, tzinfo=UTC), 1) == datetime(2027, 1, 1, tzinfo=UTC)
