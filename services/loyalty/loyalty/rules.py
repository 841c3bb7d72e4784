"""Earning rules: what a purchase, a refund, a segment entry or a feedback is worth, and the tiers.

Points are computed per line in Decimal (amount x base rate x category, tier and campaign
multipliers) and rounded down once per order, so a basket of small items earns what its sum is worth.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Annotated, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from loyalty.events import PurchaseCompleted, PurchaseRefunded
from loyalty.models import Campaign, EarningRulesRow, SegmentMembership
from shared.money import is_currency

TierName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Multiplier = Annotated[Decimal, Field(gt=0, le=1000, max_digits=12, decimal_places=4)]
Rate = Annotated[Decimal, Field(ge=0, le=1_000_000, max_digits=16, decimal_places=6)]
DEFAULT_RATE_KEY = "default"


class TierRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TierName
    threshold: int = Field(ge=0, description="rolling qualifying points needed")
    multiplier: Multiplier = Decimal(1)


def _default_tiers() -> list[TierRule]:
    return [
        TierRule(name="bronze", threshold=0),
        TierRule(name="silver", threshold=1000, multiplier=Decimal("1.25")),
        TierRule(name="gold", threshold=5000, multiplier=Decimal("1.5")),
        TierRule(name="platinum", threshold=15000, multiplier=Decimal(2)),
    ]


class EarningRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_rates: dict[str, Rate] = Field(
        default_factory=lambda: {DEFAULT_RATE_KEY: Decimal(1)},
        description='points per whole currency unit, by ISO currency code, "default" for the others',
    )
    category_multipliers: dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], Multiplier] = {}
    tiers: list[TierRule] = Field(default_factory=_default_tiers, min_length=1, max_length=20)
    segment_bonuses: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=200)], Annotated[int, Field(gt=0, le=1_000_000)]
    ] = {}
    feedback_points: int = Field(10, ge=0, le=1_000_000)
    expiry_months: int = Field(12, ge=0, le=120, description="0: points never expire")
    qualifying_window_months: int = Field(12, ge=1, le=60)

    @field_validator("base_rates")
    @classmethod
    def _known_currencies(cls, rates: dict[str, Decimal]) -> dict[str, Decimal]:
        bad = [code for code in rates if code != DEFAULT_RATE_KEY and not is_currency(code)]
        if bad:
            raise ValueError(f"keys must be ISO 4217 codes or {DEFAULT_RATE_KEY!r}: {bad}")
        return rates

    @field_validator("tiers")
    @classmethod
    def _ordered_tiers(cls, tiers: list[TierRule]) -> list[TierRule]:
        thresholds = [tier.threshold for tier in tiers]
        if thresholds[0] != 0 or any(b <= a for a, b in itertools.pairwise(thresholds)):
            raise ValueError("thresholds must start at 0 and increase strictly")
        if len({tier.name for tier in tiers}) != len(tiers):
            raise ValueError("names must be unique")
        return tiers

    def rate_for(self, currency: str) -> Decimal:
        return self.base_rates.get(currency, self.base_rates.get(DEFAULT_RATE_KEY, Decimal(0)))

    def tier_rule(self, name: str) -> TierRule:
        return next((tier for tier in self.tiers if tier.name == name), self.tiers[0])

    def tier_for(self, qualifying_points: int) -> TierRule:
        return [tier for tier in self.tiers if tier.threshold <= qualifying_points][-1]

    def rank(self, name: str) -> int:
        return next((i for i, tier in enumerate(self.tiers) if tier.name == name), 0)

    def next_tier(self, name: str) -> TierRule | None:
        rank = self.rank(name)
        return self.tiers[rank + 1] if rank + 1 < len(self.tiers) else None


class CampaignWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    multiplier: Multiplier
    segment_key: str | None = Field(None, min_length=1, max_length=200, description="only members of this segment")

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class ProgramFile(EarningRules):
    """The rules file: earning rules plus the campaigns to create with them."""

    campaigns: list[CampaignWrite] = []

    def rules(self) -> EarningRules:
        return EarningRules.model_validate(self.model_dump(exclude={"campaigns"}))


def read_program_file(path: str | None) -> ProgramFile | None:
    if not path:
        return None
    return ProgramFile.model_validate(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Earning:
    raw_points: Decimal
    points: int
    unit_points: dict[str, str]  # sku -> raw points per unit, for refunds naming items


def round_points(raw: Decimal) -> int:
    return int(raw.to_integral_value(rounding=ROUND_FLOOR)) if raw > 0 else 0


def purchase_earning(
    purchase: PurchaseCompleted, rules: EarningRules, *, tier: str, campaign_multiplier: Decimal
) -> Earning:
    multiplier = rules.rate_for(purchase.currency) * rules.tier_rule(tier).multiplier * campaign_multiplier
    if not purchase.items:
        raw = purchase.total * multiplier
        return Earning(raw, round_points(raw), {})
    raw = Decimal(0)
    by_sku: dict[str, tuple[Decimal, int]] = {}
    for item in purchase.items:
        category = rules.category_multipliers.get(item.category or "", Decimal(1))
        line = item.unit_price * item.quantity * multiplier * category
        raw += line
        sku_raw, sku_quantity = by_sku.get(item.sku, (Decimal(0), 0))
        by_sku[item.sku] = (sku_raw + line, sku_quantity + item.quantity)
    unit_points = {sku: str(line / quantity) for sku, (line, quantity) in by_sku.items()}
    return Earning(raw, round_points(raw), unit_points)


def refund_raw_points(
    refund: PurchaseRefunded, *, order_total: Decimal, order_raw_points: Decimal, unit_points: dict[str, str]
) -> Decimal:
    """The unrounded points of what was refunded: per line when items are named, else by amount."""

    def by_amount(amount: Decimal) -> Decimal:
        return order_raw_points * min(amount, order_total) / order_total if order_total > 0 else Decimal(0)

    if not refund.items:
        return by_amount(refund.amount)
    raw = Decimal(0)
    for item in refund.items:
        if item.sku in unit_points:
            raw += Decimal(unit_points[item.sku]) * item.quantity
        elif item.unit_price is not None:
            raw += by_amount(item.unit_price * item.quantity)
    return raw


async def current_rules(session: AsyncSession, *, fallback: EarningRules | None = None) -> tuple[EarningRules, int]:
    """The stored rules and their version; before any are stored, the file's rules (or defaults), version 0."""
    row = (await session.execute(select(EarningRulesRow.document, EarningRulesRow.version))).first()
    if row is None:
        return fallback or EarningRules(), 0
    return EarningRules.model_validate(row.document), int(row.version)


async def replace_rules(session: AsyncSession, *, rules: EarningRules) -> int:
    document = rules.model_dump(mode="json")
    statement = (
        insert(EarningRulesRow)
        .values(id=1, version=1, document=document, updated_at=datetime.now(UTC))
        .on_conflict_do_update(
            index_elements=[EarningRulesRow.id],
            set_={"version": EarningRulesRow.version + 1, "document": document, "updated_at": datetime.now(UTC)},
        )
        .returning(EarningRulesRow.version)
    )
    return int((await session.execute(statement)).scalar_one())


async def seed_rules(session: AsyncSession, *, program: ProgramFile) -> bool:
    """Store the file's rules and campaigns, unless the database already holds rules."""
    inserted = (
        await session.execute(
            insert(EarningRulesRow)
            .values(id=1, version=1, document=program.rules().model_dump(mode="json"))
            .on_conflict_do_nothing()
            .returning(EarningRulesRow.id)
        )
    ).first()
    if inserted is None:
        return False
    for campaign in program.campaigns:
        await create_campaign(session, campaign=campaign)
    return True


async def reset_program(session: AsyncSession) -> None:
    """Back to the default rules (a new version) and no campaigns."""
    await replace_rules(session, rules=EarningRules())
    await session.execute(delete(Campaign))


async def create_campaign(session: AsyncSession, *, campaign: CampaignWrite) -> Campaign:
    row = Campaign(id=f"cmp_{uuid.uuid4().hex[:16]}", **campaign.model_dump())
    session.add(row)
    await session.flush()
    return row


async def list_campaigns(session: AsyncSession) -> list[Campaign]:
    return list((await session.execute(select(Campaign).order_by(Campaign.starts_at, Campaign.id))).scalars())


async def get_campaign(session: AsyncSession, *, campaign_id: str) -> Campaign | None:
    return await session.get(Campaign, campaign_id)


async def replace_campaign(session: AsyncSession, *, campaign_id: str, campaign: CampaignWrite) -> Campaign | None:
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(**campaign.model_dump(), updated_at=datetime.now(UTC))
        .returning(Campaign)
    )
    return result.scalar_one_or_none()


async def delete_campaign(session: AsyncSession, *, campaign_id: str) -> bool:
    result = await session.execute(delete(Campaign).where(Campaign.id == campaign_id).returning(Campaign.id))
    return result.first() is not None


async def campaign_multiplier(
    session: AsyncSession, *, customer_id: str, at: datetime, fallback: ProgramFile | None = None
) -> Decimal:
    """The best multiplier among campaigns running at `at` for this customer (campaigns do not stack)."""
    in_segment = select(SegmentMembership.segment_key).where(
        SegmentMembership.customer_id == customer_id, SegmentMembership.member.is_(True)
    )
    rows = (
        await session.execute(
            select(Campaign.multiplier).where(
                Campaign.starts_at <= at,
                Campaign.ends_at > at,
                Campaign.segment_key.is_(None) | Campaign.segment_key.in_(in_segment),
            )
        )
    ).scalars()
    multipliers = list(rows)
    if not multipliers and fallback is not None and fallback.campaigns:
        segments = set((await session.execute(in_segment)).scalars())
        multipliers = [
            c.multiplier
            for c in fallback.campaigns
            if c.starts_at <= at < c.ends_at and (c.segment_key is None or c.segment_key in segments)
        ]
    return max(multipliers, default=Decimal(1))
