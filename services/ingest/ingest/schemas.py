"""Request and response models for ingest; cross-field rules return errors named by field."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from shared.money import decimal_places, is_currency, minor_unit, parse_money

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+=#-]*$")
]
Money = Annotated[Decimal, BeforeValidator(parse_money)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Channel = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")]
MONEY_TOLERANCE = Decimal("0.01")


class FieldError(BaseModel):
    field: str
    message: str
    type: str = "value_error"


class PurchaseItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sku: Identifier
    name: Annotated[str, StringConstraints(max_length=300)] | None = None
    category: Annotated[str, StringConstraints(max_length=200)] | None = None
    quantity: int = Field(gt=0, le=1_000_000)
    unit_price: Money = Field(ge=0)


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    occurred_at: AwareDatetime
    currency: Currency
    channel: Channel = "web"
    store_id: Identifier | None = None
    items: list[PurchaseItem] = Field(min_length=1, max_length=1000)
    total: Money | None = Field(None, ge=0)

    def items_total(self) -> Decimal:
        return sum((item.unit_price * item.quantity for item in self.items), Decimal(0))


class EventAccepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    event_id: str
    id: str | None = Field(None, description="The CloudEvents id of the published event")


def currency_errors(currency: str, amounts: dict[str, Decimal | None]) -> list[FieldError]:
    if not is_currency(currency):
        return [FieldError(field="currency", message=f"{currency} is not an ISO 4217 currency code")]
    places = minor_unit(currency)
    return [
        FieldError(field=field, message=f"{currency} amounts have at most {places} decimals")
        for field, amount in amounts.items()
        if amount is not None and decimal_places(amount) > places
    ]


def time_errors(occurred_at: datetime, now: datetime, max_skew: timedelta) -> list[FieldError]:
    if occurred_at > now + max_skew:
        return [FieldError(field="occurred_at", message=f"is more than {max_skew} in the future")]
    return []


def purchase_errors(purchase: PurchaseIn, now: datetime, max_skew: timedelta) -> list[FieldError]:
    amounts: dict[str, Decimal | None] = {
        f"items.{i}.unit_price": item.unit_price for i, item in enumerate(purchase.items)
    }
    amounts["total"] = purchase.total
    errors = currency_errors(purchase.currency, amounts)
    if purchase.total is not None and abs(purchase.total - purchase.items_total()) > MONEY_TOLERANCE:
        errors.append(
            FieldError(field="total", message=f"is {purchase.total} but the items sum to {purchase.items_total()}")
        )
    return errors + time_errors(purchase.occurred_at, now, max_skew)


def as_validation_errors(errors: list[FieldError]) -> list[dict[str, Any]]:
    """FieldErrors in FastAPI's RequestValidationError shape (loc under "body")."""
    return [{"loc": ("body", *e.field.split(".")), "msg": e.message, "type": e.type, "input": None} for e in errors]
