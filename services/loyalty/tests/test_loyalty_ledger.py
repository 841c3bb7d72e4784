"""The ledger's rules on the real database, each test in a rolled-back session."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from loyalty import handlers, service
from loyalty.models import LedgerEntry, Member, SegmentMembership
from loyalty.rules import CampaignWrite, EarningRules, TierRule, create_campaign, replace_rules, reset_program
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.envelope import Envelope, new_event
from shared.tables import outbox
from shared.testing import TestPlatform, rollback_session

NOW = datetime.now(UTC)


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("loyalty")) as session:
        # Each test starts from the default rules and no campaigns, whatever the database holds.
        await reset_program(session)
        yield session


def customer() -> str:
    return f"cus-{uuid.uuid4().hex[:12]}"


def purchase_data(customer_id: str, total: str = "100.00", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "order_id": f"ord-{uuid.uuid4().hex[:10]}",
        "customer_id": customer_id,
        "occurred_at": NOW.isoformat(),
        "currency": "USD",
        "channel": "web",
        "store_id": None,
        "items": [{"sku": "SKU-1", "name": None, "category": None, "quantity": 1, "unit_price": total}],
        "total": total,
    }
    return data | overrides


def envelope(kind: str, data: dict[str, Any]) -> Envelope:
    return new_event(type=kind, source="test", subject=data["customer_id"], data=data)


async def handle(session: AsyncSession, event: Envelope) -> None:
    for handler in handlers.HANDLERS[event.type]:
        await handler(session, event)


async def buy(session: AsyncSession, customer_id: str, total: str = "100.00", **overrides: Any) -> dict[str, Any]:
    data = purchase_data(customer_id, total, **overrides)
    await handle(session, envelope("purchase.completed", data))
    return data


def refund_data(order: dict[str, Any], amount: str, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    refund_id = f"ref-{uuid.uuid4().hex[:10]}"
    return {
        "event_id": refund_id,
        "refund_id": refund_id,
        "order_id": order["order_id"],
        "customer_id": order["customer_id"],
        "occurred_at": (NOW + timedelta(days=1)).isoformat(),
        "currency": order["currency"],
        "items": items,
        "amount": amount,
    }


async def balance(session: AsyncSession, customer_id: str) -> int:
    return int(await session.scalar(select(Member.points).where(Member.customer_id == customer_id)) or 0)


async def assert_ledger_consistent(session: AsyncSession, customer_id: str) -> None:
    """The stored balance is the sum of the entries, and the open lots add up to it."""
    entries = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.points), 0)).where(LedgerEntry.customer_id == customer_id)
    )
    lots = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.remaining), 0)).where(LedgerEntry.customer_id == customer_id)
    )
    stored = await balance(session, customer_id)
    assert (int(entries or 0), int(lots or 0)) == (stored, stored)
    assert stored >= 0


async def kinds(session: AsyncSession, customer_id: str) -> list[tuple[str, int]]:
    rows = await session.execute(
        select(LedgerEntry.kind, LedgerEntry.points)
        .where(LedgerEntry.customer_id == customer_id)
        .order_by(LedgerEntry.id)
    )
    return [(row.kind, row.points) for row in rows]


async def published(session: AsyncSession, event_type: str, customer_id: str) -> list[dict[str, Any]]:
    rows = await session.execute(select(outbox.c.payload).where(outbox.c.key == customer_id))
    events = [Envelope.model_validate_json(row.payload) for row in rows]
    return [e.data for e in events if e.type == event_type]


async def test_purchase_earns_per_whole_currency_unit_and_enrols(session: AsyncSession) -> None:
    cid = customer()
    await buy(session, cid, "39.80")
    assert await balance(session, cid) == 39
    [earned] = await published(session, "points.earned", cid)
    assert (earned["points"], earned["balance"], earned["cause_type"]) == (39, 39, "order")


async def test_identify_enrols_a_member_with_no_points(session: AsyncSession) -> None:
    cid = customer()
    await handle(session, envelope("customer.identified", {"event_id": "e", "customer_id": cid, "traits": {}}))
    member = await service.get_member(session, customer_id=cid)
    assert member is not None and (member.points, member.tier) == (0, "bronze")


async def test_balance_is_the_sum_of_entries_after_mixed_operations(session: AsyncSession) -> None:
    cid = customer()
    first = await buy(session, cid, "120.00", occurred_at=(NOW - timedelta(days=400)).isoformat())
    await buy(session, cid, "80.50")
    await service.adjust(session, customer_id=cid, points=30, reason="goodwill")
    await service.redeem(session, customer_id=cid, points=50, reason="voucher")  # from the oldest lot
    await handle(session, envelope("purchase.refunded", refund_data(first, "60.00")))  # leaves it 10
    await service.expire_lots(session, now=NOW, batch_size=100)
    await service.adjust(session, customer_id=cid, points=-5, reason="correction")
    await assert_ledger_consistent(session, cid)
    assert [kind for kind, _ in await kinds(session, cid)] == [
        "earn",
        "earn",
        "adjust",
        "redeem",
        "reverse",
        "expire",
        "adjust",
    ]


async def test_redemption_beyond_balance_changes_nothing(session: AsyncSession) -> None:
    cid = customer()
    await buy(session, cid, "50.00")
    with pytest.raises(service.InsufficientPoints):
        await service.redeem(session, customer_id=cid, points=51, reason="too much")
    assert await balance(session, cid) == 50
    assert await kinds(session, cid) == [("earn", 50)]


async def test_database_refuses_a_negative_balance(session: AsyncSession) -> None:
    cid = customer()
    await service.enroll(session, customer_id=cid)
    with pytest.raises(Exception, match="members_points_not_negative"):
        async with session.begin_nested():
            await session.execute(text("UPDATE members SET points = -1 WHERE customer_id = :c"), {"c": cid})


@pytest.mark.parametrize("order", list(itertools.permutations(["P", "R", "P'", "R'"])))
async def test_purchase_refund_and_redeliveries_in_any_order_give_the_same_balance(
    session: AsyncSession, order: tuple[str, ...]
) -> None:
    cid = customer()
    bought = purchase_data(
        cid,
        "150.00",
        items=[
            {"sku": "A", "name": None, "category": None, "quantity": 2, "unit_price": "25.00"},
            {"sku": "B", "name": None, "category": None, "quantity": 1, "unit_price": "100.00"},
        ],
    )
    purchase = envelope("purchase.completed", bought)
    refund = envelope("purchase.refunded", refund_data(bought, "25.00", [{"sku": "A", "quantity": 1}]))
    events = {"P": purchase, "P'": purchase, "R": refund, "R'": refund}
    for name in order:
        await handle(session, events[name])
    assert await balance(session, cid) == 125
    assert sorted(await kinds(session, cid)) == [("earn", 150), ("reverse", -25)]
    await assert_ledger_consistent(session, cid)


async def test_partial_refunds_in_any_split_reverse_the_order_once(session: AsyncSession) -> None:
    cid = customer()
    bought = await buy(session, cid, "10.00")  # earns 10; three refunds of 3.33 + 3.33 + 3.34
    for amount in ("3.33", "3.33", "3.34"):
        await handle(session, envelope("purchase.refunded", refund_data(bought, amount)))
    assert await balance(session, cid) == 0
    assert [points for kind, points in await kinds(session, cid) if kind == "reverse"] == [-3, -3, -4]


async def test_refund_of_points_already_spent_floors_at_zero_and_records_the_shortfall(session: AsyncSession) -> None:
    cid = customer()
    bought = await buy(session, cid, "100.00")
    await service.redeem(session, customer_id=cid, points=80, reason="voucher")
    await handle(session, envelope("purchase.refunded", refund_data(bought, "100.00")))
    assert await balance(session, cid) == 0
    entry = (
        await session.execute(select(LedgerEntry).where(LedgerEntry.customer_id == cid, LedgerEntry.kind == "reverse"))
    ).scalar_one()
    assert (entry.points, entry.shortfall, entry.qualifying) == (-20, 80, -100)
    [reversed_] = await published(session, "points.reversed", cid)
    assert (reversed_["points"], reversed_["shortfall"], reversed_["balance"]) == (20, 80, 0)
    await assert_ledger_consistent(session, cid)


async def test_expiry_after_a_redemption_spanning_two_lots_expires_only_what_is_left(session: AsyncSession) -> None:
    cid = customer()
    january, february = NOW - timedelta(days=420), NOW - timedelta(days=390)  # expire after 12 months
    await buy(session, cid, "100.00", occurred_at=january.isoformat())
    await buy(session, cid, "100.00", occurred_at=february.isoformat())
    await service.redeem(session, customer_id=cid, points=150, reason="spans two lots")
    lots = (
        await session.execute(
            select(LedgerEntry.remaining)
            .where(LedgerEntry.customer_id == cid, LedgerEntry.kind == "earn")
            .order_by(LedgerEntry.id)
        )
    ).scalars()
    assert list(lots) == [0, 50]  # the oldest lot is used up first
    # Between the two expiries nothing is left to expire; after the second, its 50 points go.
    assert (
        await service.expire_lots(session, now=service.add_months(january, 12) + timedelta(days=1), batch_size=10) == 0
    )
    assert await service.expire_lots(session, now=NOW, batch_size=10) == 1
    assert await balance(session, cid) == 0
    [expired] = await published(session, "points.expired", cid)
    assert (expired["points"], expired["balance"]) == (50, 0)
    assert await service.expire_lots(session, now=NOW, batch_size=10) == 0
    await assert_ledger_consistent(session, cid)


async def test_tier_upgrades_at_once_and_downgrades_on_review(session: AsyncSession) -> None:
    cid = customer()
    old = (NOW - timedelta(days=300)).isoformat()
    await buy(session, cid, "1200.00", occurred_at=old)
    member = await service.get_member(session, customer_id=cid)
    assert member is not None and member.tier == "silver"
    [changed] = await published(session, "tier.changed", cid)
    assert (changed["from_tier"], changed["to_tier"], changed["qualifying_points"]) == ("bronze", "silver", 1200)
    # Silver earns 1.25x; the purchase leaves the 12-month window, and the review downgrades.
    await buy(session, cid, "100.00")
    assert await balance(session, cid) == 1325
    later = NOW + timedelta(days=100)
    assert await service.review_tiers(session, now=later, batch_size=100) >= 1
    await session.refresh(member)
    assert member.tier == "bronze"


async def test_rules_drive_rates_categories_campaigns_and_round_once_per_order(session: AsyncSession) -> None:
    rules = EarningRules(
        base_rates={"default": Decimal(1), "EUR": Decimal(2)},
        category_multipliers={"shoes": Decimal(3)},
        tiers=[TierRule(name="bronze", threshold=0)],
    )
    await replace_rules(session, rules=rules)
    await create_campaign(
        session,
        campaign=CampaignWrite(
            name="double week", starts_at=NOW - timedelta(days=1), ends_at=NOW + timedelta(days=1), multiplier=2
        ),
    )
    cid = customer()
    items = [
        {"sku": "A", "name": None, "category": "shoes", "quantity": 3, "unit_price": "0.30"},  # 3 x 0.30 x 2 x 3 x 2
        {"sku": "B", "name": None, "category": None, "quantity": 1, "unit_price": "0.45"},  # 0.45 x 2 x 2
    ]
    await buy(session, cid, "1.35", currency="EUR", items=items)
    # Per line: 10.8 + 1.8 = 12.6, rounded down once per order (12), not per line (10 + 1).
    assert await balance(session, cid) == 12


async def test_campaign_limited_to_a_segment_uses_the_latest_membership(session: AsyncSession) -> None:
    await replace_rules(session, rules=EarningRules())
    await create_campaign(
        session,
        campaign=CampaignWrite(
            name="vip",
            starts_at=NOW - timedelta(days=1),
            ends_at=NOW + timedelta(days=1),
            multiplier=3,
            segment_key="vip",
        ),
    )
    cid = customer()

    def membership(kind: str, at: datetime) -> Envelope:
        data = {"customer_id": cid, "segment_id": "s1", "segment_key": "vip", "segment_name": "VIP"}
        return envelope(kind, data | {"kind": "rule", "reason": "r", "occurred_at": at.isoformat()})

    # The exit happened after the entry but arrives first: the member stays out.
    await handle(session, membership("segment.exited", NOW - timedelta(hours=1)))
    await handle(session, membership("segment.entered", NOW - timedelta(hours=2)))
    stored = await session.get(SegmentMembership, (cid, "vip"))
    assert stored is not None and stored.member is False
    await buy(session, cid, "10.00")
    assert await balance(session, cid) == 10
    await handle(session, membership("segment.entered", NOW - timedelta(minutes=5)))
    await buy(session, cid, "10.00")
    assert await balance(session, cid) == 40


async def test_segment_entry_bonus_and_feedback_points_are_credited_once(session: AsyncSession) -> None:
    await replace_rules(session, rules=EarningRules(segment_bonuses={"win_back": 200}, feedback_points=25))
    cid = customer()
    entered = envelope(
        "segment.entered",
        {
            "customer_id": cid,
            "segment_id": "s",
            "segment_key": "win_back",
            "segment_name": "Win back",
            "kind": "rule",
            "reason": "r",
            "occurred_at": NOW.isoformat(),
        },
    )
    await handle(session, entered)
    await handle(session, entered)
    feedback = {
        "feedback_id": "f1",
        "event_id": "f1",
        "customer_id": cid,
        "kind": "rating",
        "score": 5,
        "order_id": "ord-1",
        "sku": None,
        "channel": "web",
        "sentiment": None,
        "occurred_at": NOW.isoformat(),
    }
    await handle(session, envelope("feedback.submitted", feedback))
    await handle(session, envelope("feedback.submitted", feedback | {"feedback_id": "f2", "kind": "comment"}))
    await handle(session, envelope("feedback.submitted", feedback | {"feedback_id": "f3", "order_id": None}))
    assert await balance(session, cid) == 225


async def test_erasure_anonymises_the_member_and_confirms(session: AsyncSession) -> None:
    cid = customer()
    await buy(session, cid, "70.00")
    await service.redeem(session, customer_id=cid, points=20, reason="gift for Jane")
    before = await session.scalar(select(func.sum(Member.points)))
    token = await service.erase_member(session, customer_id=cid, request_id="req-1")
    assert token is not None and cid not in token
    assert await service.get_member(session, customer_id=cid) is None
    assert (
        await session.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.customer_id == cid)) == 0
    )
    assert await session.scalar(select(func.sum(Member.points))) == before  # aggregates unchanged
    assert await balance(session, token) == 50
    await assert_ledger_consistent(session, token)
    assert (
        await session.scalar(
            select(func.count()).where(LedgerEntry.reason.is_not(None), LedgerEntry.customer_id == token)
        )
        == 0
    )
    [confirmed] = [
        Envelope.model_validate_json(p)
        for p in (
            await session.execute(select(outbox.c.payload).where(outbox.c.topic == "loyalty.erasures.v1"))
        ).scalars()
        if cid in p
    ]
    assert confirmed.type == "erasure.confirmed"
    assert confirmed.data["request_id"] == "req-1" and confirmed.data["service"] == "loyalty"


async def test_erasure_request_is_handled_from_the_topic(session: AsyncSession) -> None:
    cid = customer()
    await buy(session, cid, "5.00")
    request = {"request_id": "req-2", "customer_id": cid, "requested_at": NOW.isoformat()}
    await handle(session, envelope("customer.erasure_requested", request))
    assert await service.get_member(session, customer_id=cid) is None


async def test_segment_exits_announced_after_an_erasure_do_not_name_the_customer_again(session: AsyncSession) -> None:
    cid = customer()
    change = {
        "customer_id": cid,
        "segment_id": "seg-vip",
        "segment_key": "vip",
        "segment_name": "VIP",
        "kind": "rule",
        "reason": "test",
        "occurred_at": (NOW - timedelta(days=1)).isoformat(),
    }
    await handle(session, envelope("segment.entered", change))
    request = {"request_id": "req-exit", "customer_id": cid, "requested_at": NOW.isoformat()}
    await handle(session, envelope("customer.erasure_requested", request))
    # Segments removes the erased customer from its segments and announces the exits, after the erasure.
    later = (NOW + timedelta(seconds=1)).isoformat()
    await handle(session, envelope("segment.exited", change | {"occurred_at": later}))
    held = select(func.count()).select_from(SegmentMembership).where(SegmentMembership.customer_id == cid)
    assert await session.scalar(held) == 0
