"""Request and response models for ingest.

Field rules that need the clock or settings read them from the validation context (`Limits`), so
they are reported together with type errors; rules across fields are in checks.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.auth import ALL_SCOPES
from shared.errors import FieldError
from shared.money import is_currency

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
MAX_MONEY_EXPONENT = 12  # amounts below 10^12
MAX_MONEY_DECIMALS = 4  # the largest ISO 4217 minor unit (CLF, UYW)
MONEY_LIMIT = Decimal(10) ** MAX_MONEY_EXPONENT
QUANTUM = {places: Decimal(1).scaleb(-places) for places in range(MAX_MONEY_DECIMALS + 1)}  # 0 -> 1, 2 -> 0.01


@dataclass(slots=True)  # read-only by convention: a frozen dataclass's __init__ cost ~3 µs per request
class Limits:
    """What validation needs beyond the input: passed as pydantic's validation context."""

    now: datetime
    max_future_skew: timedelta
    interaction_types: frozenset[str]
    max_properties_bytes: int
    max_properties_keys: int


def _limits(info: ValidationInfo) -> Limits:
    limits = info.context
    if not isinstance(limits, Limits):
        raise TypeError("validate ingest events with context=Limits(...)")
    return limits


def bounded_money(amount: Decimal) -> Decimal:
    if abs(amount) >= MONEY_LIMIT:
        raise ValueError(f"must be less than 10^{MAX_MONEY_EXPONENT}")
    # Trailing zeros are fine ("19.9000000"); digits beyond any currency's minor unit are not.
    if amount != amount.quantize(QUANTUM[MAX_MONEY_DECIMALS]):
        raise ValueError(f"has more than {MAX_MONEY_DECIMALS} decimals")
    return amount


def _not_in_future(value: datetime, info: ValidationInfo) -> datetime:
    limits = _limits(info)
    if value > limits.now + limits.max_future_skew:
        raise ValueError(f"is more than {limits.max_future_skew} in the future")
    if value < EARLIEST:
        raise ValueError("is before 1900")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _iso_currency(code: str) -> str:
    if not is_currency(code):
        raise ValueError(f"{code} is not an ISO 4217 currency code")
    return code


def _known_interaction(kind: str, info: ValidationInfo) -> str:
    allowed = _limits(info).interaction_types
    if kind not in allowed:
        raise ValueError(f"must be one of {', '.join(sorted(allowed))}")
    return kind


def _sized_object(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    limits = _limits(info)
    if len(value) > limits.max_properties_keys:
        raise ValueError(f"has more than {limits.max_properties_keys} keys")
    try:
        encoded = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as error:
        raise ValueError("is nested too deeply") from error
    size = len(encoded)
    if b"\\u0000" in encoded:
        raise ValueError("must not contain NUL characters")
    if size > limits.max_properties_bytes:
        raise ValueError(f"is over {limits.max_properties_bytes} bytes as JSON")
    return value


IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=#-]{0,127}")
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=f"^{IDENTIFIER.pattern}$")]
# pydantic's own Decimal parsing (strings and JSON numbers, floats through their repr, no NaN/inf).
Money = Annotated[Decimal, Field(allow_inf_nan=False), AfterValidator(bounded_money)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$"), AfterValidator(_iso_currency)]
Channel = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")]
OccurredAt = Annotated[AwareDatetime, AfterValidator(_not_in_future)]
InteractionType = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$"), AfterValidator(_known_interaction)
]
JsonObject = Annotated[dict[str, Any], AfterValidator(_sized_object)]
Text = Annotated[str, StringConstraints(max_length=300), AfterValidator(_no_nul)]
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")
PHONE = re.compile(r"^\+?[0-9 ().-]{7,25}$")


def _email(value: str) -> str:
    if len(value) > 254 or not EMAIL.match(value):
        raise ValueError("is not an e-mail address")
    return value


def _phone(value: str) -> str:
    digits = sum(ch.isdigit() for ch in value)
    if not PHONE.match(value) or not 7 <= digits <= 15:
        raise ValueError("is not a phone number (7 to 15 digits, optional +, spaces, dashes, dots, brackets)")
    return value


def _past_date(value: date, info: ValidationInfo) -> date:
    if value > _limits(info).now.date() or value < EARLIEST.date():
        raise ValueError("must be a date between 1900-01-01 and today")
    return value


Email = Annotated[str, AfterValidator(_no_nul), AfterValidator(_email)]
Phone = Annotated[str, AfterValidator(_phone)]
PastDate = Annotated[date, AfterValidator(_past_date)]


class PurchaseItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sku: Identifier
    name: Text | None = None
    category: Text | None = None
    quantity: int = Field(gt=0, le=1_000_000)
    unit_price: Money = Field(ge=0)


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    occurred_at: OccurredAt
    currency: Currency
    channel: Channel = "web"
    store_id: Identifier | None = None
    items: list[PurchaseItem] = Field(min_length=1, max_length=1000)
    total: Money | None = Field(None, ge=0)

    def items_total(self) -> Decimal:
        return sum((item.unit_price * item.quantity for item in self.items), Decimal(0))


class RefundItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sku: Identifier
    quantity: int = Field(gt=0, le=1_000_000)
    unit_price: Money | None = Field(None, ge=0, description="Defaults to the price in the original order")
    category: Text | None = None


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    occurred_at: OccurredAt
    currency: Currency
    items: list[RefundItem] | None = Field(None, min_length=1, max_length=1000)
    amount: Money | None = Field(None, gt=0)


class InteractionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: Identifier
    customer_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    occurred_at: OccurredAt
    type: InteractionType
    channel: Channel = "web"
    properties: JsonObject = Field(default_factory=dict)


class Traits(BaseModel):
    """Known traits are checked; custom keys are kept as sent (bounded in size)."""

    model_config = ConfigDict(extra="allow")

    email: Email | None = None
    phone: Phone | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_nul)] | None = None
    birthday: PastDate | None = None
    gender: Annotated[str, StringConstraints(max_length=32), AfterValidator(_no_nul)] | None = None
    city: Annotated[str, StringConstraints(max_length=100), AfterValidator(_no_nul)] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None
    signup_at: AwareDatetime | None = None
    marketing_consent: bool | None = None

    @model_validator(mode="after")
    def _custom_keys_bounded(self, info: ValidationInfo) -> Traits:
        custom = self.model_extra or {}
        bad = [key for key in custom if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", key)]
        if bad:
            raise ValueError(f"custom trait names must be 1-64 letters, digits, _ . - : {', '.join(bad[:5])}")
        _sized_object(custom, info)
        return self


class IdentifyIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: Identifier
    customer_id: Identifier
    anonymous_id: Identifier | None = None
    occurred_at: OccurredAt
    traits: Traits = Field(default_factory=Traits.model_construct)


EventModel = PurchaseIn | RefundIn | InteractionIn | IdentifyIn
Kind = Literal["purchase", "refund", "interaction", "identify"]
MODEL_BY_KIND: dict[str, type[EventModel]] = {
    "purchase": PurchaseIn,
    "refund": RefundIn,
    "interaction": InteractionIn,
    "identify": IdentifyIn,
}


class EventAccepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    event_id: str
    id: str | None = Field(
        None, description="The CloudEvents id of the published event (the original's for a duplicate)"
    )


class BatchIn(BaseModel):
    """For the documentation only: the batch body is parsed event by event."""

    events: list[dict[str, Any]] = Field(
        description='Each event is the body of its endpoint plus "kind": purchase, refund, interaction or identify'
    )


class BatchRejection(BaseModel):
    index: int
    event_id: str | None
    errors: list[FieldError]


class BatchResult(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[BatchRejection]


class ImportRejection(BaseModel):
    line: int
    errors: list[FieldError]


class ImportReport(BaseModel):
    lines: int = Field(description="Data lines read (the CSV header not counted)")
    orders: int = Field(description="Orders found among the good lines")
    imported: int = Field(description="Orders published as purchase.completed")
    duplicates: int = Field(description="Orders already known to ingest (imported before or sent live)")
    rejected_lines: int
    skipped_orders: int = Field(description="Orders left out because one of their lines was rejected or disagreed")
    rejected: list[ImportRejection] = Field(description="The first rejected lines, with their line numbers")


class ApiKeyCreate(BaseModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    scopes: list[str] = Field(min_length=1)
    source: Identifier | None = Field(
        None, max_length=64, description="Dedup namespace for events sent with this key; default: the key id"
    )
    rate_limit_per_second: int | None = Field(None, gt=0, le=1_000_000)
    expires_at: AwareDatetime | None = None

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: list[str]) -> list[str]:
        unknown = sorted(set(scopes) - set(ALL_SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
        return scopes


class ApiKeyRead(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    source: str
    rate_limit_per_second: int | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyIssuedRead(ApiKeyRead):
    key: str = Field(description="The key itself: shown once, never stored")
