"""Validate one incoming event: field rules (pydantic) and rules across fields, reported together.

The rules across fields run on the money an event states. When the fields are valid that is
read from the model; otherwise it is read leniently from the raw input, so a bad total is named
even when another field has a type error (a rule whose inputs are themselves invalid is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from ingest.schemas import MODEL_BY_KIND, QUANTUM, EventModel, Limits, PurchaseIn, RefundIn, bounded_money
from shared.errors import FieldError
from shared.money import is_currency, minor_unit, parse_money

MONEY_TOLERANCE = Decimal("0.01")
_VALUE_ERROR_PREFIX = "Value error, "
STATED = {"purchase": "total", "refund": "amount"}  # the amount an event states besides its items


@dataclass(frozen=True)
class StatedMoney:
    """The money of a purchase or refund; None where absent or invalid."""

    currency: str | None
    prices: list[Decimal | None]  # items' unit_price
    items_value: Decimal | None  # sum of quantity * unit_price when every item has both
    stated: Decimal | None  # total or amount
    has_items: bool


def check_event(kind: str, raw: object, limits: Limits) -> tuple[EventModel | None, list[FieldError]]:
    """The validated event, or None and every error found (field errors first)."""
    if not isinstance(raw, dict):
        return None, [FieldError(field="body", message="must be a JSON object", type="dict_type")]
    try:
        model = MODEL_BY_KIND[kind].model_validate(raw, context=limits)
    except ValidationError as error:
        errors = pydantic_errors(error)
        named = {e.field for e in errors}
        money = _money_from_raw(raw, STATED[kind]) if kind in STATED else None
        return None, errors + [e for e in _cross_field_errors(kind, raw, money) if e.field not in named]
    if type(model) is PurchaseIn and _purchase_adds_up(model):
        return model, []  # the common case, checked in one pass; anything else is explained below
    money = _money_from_model(model) if type(model) is PurchaseIn or type(model) is RefundIn else None
    errors = _cross_field_errors(kind, raw, money)
    return (None if errors else model), errors


def _purchase_adds_up(purchase: PurchaseIn) -> bool:
    """True when no amount has more decimals than the currency and a stated total equals the items' sum."""
    quantum = QUANTUM[minor_unit(purchase.currency)]
    value = Decimal(0)
    for item in purchase.items:
        price = item.unit_price
        if price != price.quantize(quantum):
            return False
        value += price * item.quantity
    total = purchase.total
    return total is None or (total == total.quantize(quantum) and abs(total - value) <= MONEY_TOLERANCE)


def pydantic_errors(error: ValidationError) -> list[FieldError]:
    return [
        FieldError(
            field=".".join(str(part) for part in e["loc"]) or "body",
            message=e["msg"].removeprefix(_VALUE_ERROR_PREFIX),
            type=e["type"],
        )
        for e in error.errors(include_url=False, include_context=False, include_input=False)
    ]


def _cross_field_errors(kind: str, raw: dict[str, Any], money: StatedMoney | None) -> list[FieldError]:
    if money is not None:
        return _decimal_errors(money, STATED[kind]) + _sum_errors(kind, money)
    if kind == "interaction" and not raw.get("customer_id") and not raw.get("anonymous_id"):
        return [FieldError(field="customer_id", message="customer_id or anonymous_id is required", type="missing")]
    return []


def _money_from_model(model: PurchaseIn | RefundIn) -> StatedMoney:
    items = model.items or []
    prices = [item.unit_price for item in items]
    value: Decimal | None = Decimal(0) if items else None
    for item in items:
        if value is None or item.unit_price is None:
            value = None
            break
        value += item.unit_price * item.quantity
    stated = model.total if isinstance(model, PurchaseIn) else model.amount
    return StatedMoney(model.currency, prices, value, stated, model.items is not None)


def _money_from_raw(raw: dict[str, Any], stated_field: str) -> StatedMoney:
    items = raw.get("items")
    items = items if isinstance(items, list) else []
    prices = [_money(item.get("unit_price")) if isinstance(item, dict) else None for item in items]
    value: Decimal | None = Decimal(0) if items else None
    for item, price in zip(items, prices, strict=True):
        quantity = _quantity(item.get("quantity")) if isinstance(item, dict) else None
        if value is None or price is None or quantity is None:
            value = None
            break
        value += price * quantity
    currency = raw.get("currency")
    currency = currency if isinstance(currency, str) and is_currency(currency) else None
    return StatedMoney(currency, prices, value, _money(raw.get(stated_field)), raw.get("items") is not None)


def _money(value: object) -> Decimal | None:
    """The amount if it is a valid one, else None (its field reports the error)."""
    if value is None:
        return None
    try:
        return bounded_money(parse_money(value))
    except ValueError:
        return None


def _quantity(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1_000_000 else None


def _decimal_errors(money: StatedMoney, stated_field: str) -> list[FieldError]:
    if money.currency is None:
        return []
    places = minor_unit(money.currency)
    amounts = {f"items.{i}.unit_price": price for i, price in enumerate(money.prices)}
    amounts[stated_field] = money.stated
    return [
        FieldError(field=field, message=f"{money.currency} amounts have at most {places} decimals")
        for field, amount in amounts.items()
        if amount is not None and _too_precise(amount, places)
    ]


def _too_precise(amount: Decimal, places: int) -> bool:
    """More decimals than the currency has (amounts are already bounded to 4 decimals and 10^12)."""
    return amount != amount.quantize(QUANTUM[places])


def _sum_errors(kind: str, money: StatedMoney) -> list[FieldError]:
    if kind == "refund" and not money.has_items and money.stated is None:
        return [FieldError(field="items", message="a refund names items or an amount", type="missing")]
    if money.stated is None or money.items_value is None or abs(money.stated - money.items_value) <= MONEY_TOLERANCE:
        return []
    field = STATED[kind]
    what = "items" if kind == "purchase" else "refunded items"
    return [FieldError(field=field, message=f"is {money.stated} but the {what} sum to {money.items_value}")]
