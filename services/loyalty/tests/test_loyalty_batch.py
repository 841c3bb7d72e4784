"""The batch handler for purchase.completed ends exactly where one-by-one application ends."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from loyalty import handlers, service
from loyalty.batch import apply_purchases, batch_handlers_for
from loyalty.rules import CampaignWrite, EarningRules, ProgramFile, create_campaign, replace_rules, reset_program
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.envelope import Envelope, new_event
from shared.testing import TestPlatform, rollback_session

NOW = datetime.now(UTC)
Apply = Callable[[AsyncSession, Sequence[Envelope]], Awaitable[None]]


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("loyalty")) as session:
        await reset_program(session)
        yield session


def _purchase(customer_id: str, order_id: str, total: str, *, at: datetime = NOW, **extra: Any) -> Envelope:
    data = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "order_id": order_id,
        "customer_id": customer_id,
        "occurred_at": at.isoformat(),
        "currency": "USD",
        "channel": "web",
        "items": [{"sku": "SKU-1", "name": None, "category": None, "quantity": 1, "unit_price": total}],
        "total": total,
    } | extra
    return new_event(type="purchase.completed", source="test", subject=customer_id, data=data)


def _event(event_type: str, customer_id: str, **data: Any) -> Envelope:
    return new_event(type=event_type, source="test", subject=customer_id, data={"customer_id": customer_id, **data})


async def one_by_one(session: AsyncSession, events: Sequence[Envelope]) -> None:
    for event in events:
        for handler in handlers.HANDLERS[event.type]:
            await handler(session, event)


async def as_one_batch(session: AsyncSession, events: Sequence[Envelope]) -> None:
    await batch_handlers_for(None)["purchase.completed"](session, events)


async def scenario(session: AsyncSession, prefix: str, apply: Apply, shuffle: random.Random | None) -> list[str]:
    """Set-up applied one by one, then a mixed batch of purchases applied with `apply`; the customers."""
    climber, zero, waiting, known, erased, vip, old = (f"{prefix}-{n}" for n in range(7))
    entered = _event(
        "segment.entered",
        vip,
        segment_id="s",
        segment_key="vip",
        segment_name="VIP",
        kind="rule",
        reason="r",
        occurred_at=(NOW - timedelta(days=1)).isoformat(),
    )
    refund_first = _event(
        "purchase.refunded",
        waiting,
        event_id=f"ref-{prefix}",
        refund_id=f"ref-{prefix}",
        order_id="w-1",
        occurred_at=NOW.isoformat(),
        currency="USD",
        items=None,
        amount="40.00",
    )
    await one_by_one(session, [entered, refund_first, _purchase(known, "k-1", "300.00")])
    await service.erase_member(session, customer_id=erased, request_id=f"req-{prefix}", requested_at=NOW)
    first = _purchase(climber, "c-1", "600.00")
    batch = [
        first,
        _purchase(zero, "z-1", "0.00"),
        _purchase(climber, "c-2", "500.00"),  # 1,100 qualifying: silver from here on
        _purchase(waiting, "w-1", "100.00"),  # its refund arrived first
        _purchase(climber, "c-3", "100.00"),  # earns 125 in silver
        first,  # the same event again
        _purchase(climber, "c-1", "600.00"),  # the same order, another event id
        _purchase(known, "k-1", "300.00"),  # already applied before the batch
        _purchase(known, "k-2", "5000.00", items=[]),  # crosses two thresholds at once: gold
        _purchase(erased, "e-1", "50.00", at=NOW - timedelta(hours=1)),  # before the erasure: dropped
        _purchase(erased, "e-2", "70.00", at=NOW + timedelta(seconds=1)),  # after it: a new member
        _purchase(vip, "v-1", "10.00"),  # segment campaign x3
        _purchase(vip, "v-2", "1.00", at=NOW.replace(microsecond=0).astimezone(timezone(timedelta(hours=2)))),
        _purchase(waiting, "w-2", "20.00"),
        _purchase(old, "o-1", "2000.00", at=NOW - timedelta(days=400)),  # out of the window, lot expired
        _purchase(old, "o-2", "10.00", at=NOW - timedelta(days=1)),
    ]
    if shuffle is not None:
        shuffle.shuffle(batch)
    await apply(session, batch)
    return [climber, zero, waiting, known, erased, vip, old]


async def state(session: AsyncSession, customers: list[str]) -> list[Any]:
    """Everything a purchase can change, per customer in scenario order, ids and clocks left out."""
    found: list[Any] = []
    for customer_id in customers:
        params = {"c": customer_id}
        member = (
            await session.execute(
                text("SELECT points, tier, tier_changed_at IS NOT NULL FROM members WHERE customer_id = :c"), params
            )
        ).all()
        entries = (
            await session.execute(
                text(
                    "SELECT kind, points, cause_type, cause_id, occurred_at, balance_after, remaining, expires_at,"
                    " qualifying, qualifying_at, shortfall FROM ledger_entries WHERE customer_id = :c"
                    " ORDER BY balance_after, cause_id, kind"
                ),
                params,
            )
        ).all()
        orders = (
            await session.execute(
                text(
                    "SELECT order_id, total, raw_points, points, unit_points, refunded_raw_points, reversed_points"
                    " FROM orders WHERE customer_id = :c ORDER BY order_id"
                ),
                params,
            )
        ).all()
        refunds = (
            await session.execute(
                text("SELECT refund_id, state FROM refunds WHERE customer_id = :c ORDER BY refund_id"), params
            )
        ).all()
        events = []
        for (payload,) in (
            await session.execute(
                text("SELECT payload FROM outbox WHERE key = :c AND topic = 'loyalty.accounts.v1' ORDER BY id"), params
            )
        ).all():
            envelope = Envelope.model_validate_json(payload)
            data = {k: v for k, v in envelope.data.items() if k != "entry_id"}
            if envelope.type == "tier.changed":
                data.pop("occurred_at")
            events.append((envelope.type, envelope.subject, data))
        found.append((member, entries, orders, refunds, events))
    return found


def _renamed(found: list[Any], prefix: str) -> str:
    return repr(found).replace(prefix, "<customer>")


async def _compare(session: AsyncSession, shuffle_seed: int | None) -> list[Any]:
    run = uuid.uuid4().hex[:8]
    one, batch = f"one-{run}", f"bat-{run}"
    await create_campaign(
        session,
        campaign=CampaignWrite(
            name="vip triple",
            starts_at=NOW - timedelta(days=2),
            ends_at=NOW + timedelta(days=2),
            multiplier=Decimal(3),
            segment_key="vip",
        ),
    )
    seeds = [random.Random(shuffle_seed), random.Random(shuffle_seed)] if shuffle_seed is not None else [None, None]
    expected = await state(session, await scenario(session, one, one_by_one, seeds[0]))
    found = await state(session, await scenario(session, batch, as_one_batch, seeds[1]))
    assert _renamed(found, batch) == _renamed(expected, one)
    return found


async def test_a_batch_of_mixed_purchases_ends_like_one_by_one_application(session: AsyncSession) -> None:
    found = await _compare(session, None)
    climber, zero, _, known, _, vip, _ = found
    assert climber[0] == [(1225, "silver", True)]  # 600 + 500, then 100 x 1.25
    assert zero[0] == [(0, "bronze", False)] and zero[1] == []
    assert known[0] == [(5300, "gold", True)]
    assert vip[0][0][0] == 33
    assert [kind for kind, _, _ in climber[4]] == ["points.earned", "points.earned", "tier.changed", "points.earned"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_a_shuffled_batch_ends_like_one_by_one_application_in_the_same_order(
    session: AsyncSession, seed: int
) -> None:
    await _compare(session, seed)


async def test_a_redelivered_batch_changes_nothing(session: AsyncSession) -> None:
    customer_id = f"cus-{uuid.uuid4().hex[:10]}"
    batch = [_purchase(customer_id, f"ord-{i}", "700.00") for i in range(3)]
    await as_one_batch(session, batch)
    before = await state(session, [customer_id])
    await as_one_batch(session, batch)
    await as_one_batch(session, list(reversed(batch)))
    assert await state(session, [customer_id]) == before
    assert before[0][0] == [(2275, "silver", True)]  # 700 + 700, then 700 x 1.25


async def test_rules_file_and_its_campaigns_apply_before_rules_are_stored(session: AsyncSession) -> None:
    await session.execute(text("DELETE FROM earning_rules"))
    await session.execute(text("DELETE FROM campaigns"))
    program = ProgramFile(
        base_rates={"default": Decimal(2)},
        campaigns=[
            CampaignWrite(name="x", starts_at=NOW - timedelta(days=1), ends_at=NOW + timedelta(days=1), multiplier=5)
        ],
    )
    one, batch = (f"cus-{uuid.uuid4().hex[:10]}" for _ in range(2))
    for customer_id in (one, batch):
        events = [_purchase(customer_id, "a", "10.00"), _purchase(customer_id, "b", "1.10")]
        if customer_id == one:
            for event in events:
                await handlers.handlers_for(program)["purchase.completed"][0](session, event)
        else:
            await apply_purchases(session, events, program=program)
    expected, found = await state(session, [one]), await state(session, [batch])
    assert _renamed(found, batch) == _renamed(expected, one)
    assert found[0][0] == [(111, "bronze", False)]  # 10 x 2 x 5 + floor(1.10 x 2 x 5)


def _membership(kind: str, customer_id: str, key: str, at: datetime) -> Envelope:
    return _event(
        kind, customer_id, segment_id=key, segment_key=key, segment_name=key, kind="rule", reason="r",
        occurred_at=at.isoformat(),
    )  # fmt: skip


async def test_a_batch_of_segment_changes_ends_like_one_by_one_application(session: AsyncSession) -> None:
    await replace_rules(session, rules=EarningRules(segment_bonuses={"win_back": 50}))
    run = uuid.uuid4().hex[:8]
    outcomes = []
    for prefix in (f"one-{run}", f"bat-{run}"):
        back, flapper, erased = (f"{prefix}-{n}" for n in range(3))
        await service.erase_member(session, customer_id=erased, request_id=f"req-{prefix}", requested_at=NOW)
        changes = [
            _membership("segment.entered", back, "win_back", NOW - timedelta(hours=3)),
            _membership("segment.entered", back, "win_back", NOW - timedelta(hours=3)),  # redelivered
            _membership("segment.exited", flapper, "vip", NOW - timedelta(hours=1)),  # arrives before its entry
            _membership("segment.entered", flapper, "vip", NOW - timedelta(hours=2)),
            _membership("segment.entered", flapper, "gold", NOW - timedelta(hours=2)),
            _membership("segment.entered", erased, "vip", NOW - timedelta(hours=1)),  # before the erasure
            _membership("segment.exited", erased, "gold", NOW + timedelta(seconds=1)),  # after it: no row
        ]
        if prefix.startswith("one"):
            await one_by_one(session, changes)
        else:
            batch = batch_handlers_for(None)
            for kind in ("segment.exited", "segment.entered"):  # by type, as the consumer hands them over
                await batch[kind](session, [c for c in changes if c.type == kind])
        rows = await session.execute(
            text(
                "SELECT customer_id, segment_key, member, changed_at FROM segment_memberships"
                " WHERE customer_id LIKE :p ORDER BY 1, 2"
            ),
            {"p": f"{prefix}-%"},
        )
        points = await session.execute(
            text("SELECT customer_id, points FROM members WHERE customer_id LIKE :p ORDER BY 1"), {"p": f"{prefix}-%"}
        )
        outcomes.append(_renamed([rows.all(), points.all()], prefix))
    assert outcomes[0] == outcomes[1]
    assert "'win_back', True" in outcomes[0] and "'vip', False" in outcomes[0] and "50)" in outcomes[0]
