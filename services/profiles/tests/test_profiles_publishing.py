"""profile.updated: published only on change, naming the fields, with increasing versions and no PII;
lifecycle stages that move as time passes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from profiles.config import ProfilesSettings
from profiles.lifecycle import reevaluate_stages
from profiles.models import Customer
from profiles.portrait import publish_all_changes, publish_changes
from profiles.testing import Events
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.testing import TestPlatform, rollback_session
from shared.topics import PROFILES

SETTINGS = ProfilesSettings(consumers_enabled=False)


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("profiles")) as session:
        yield session


@pytest.fixture
def events() -> Events:
    return Events(f"cus-{uuid.uuid4().hex[:12]}")


async def published(session: AsyncSession, customer_id: str) -> list[dict[str, Any]]:
    rows = await session.execute(
        text("select payload from outbox where topic = :topic and key = :key order by id"),
        {"topic": PROFILES, "key": customer_id},
    )
    return [orjson.loads(payload) for payload in rows.scalars()]


async def test_a_change_is_published_with_its_fields_and_a_new_version(session: AsyncSession, events: Events) -> None:
    await events.apply(session, events.purchase("o-1", days_ago=3, items=[("TEA", "tea", 1, "5.00")]))
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    await events.apply(session, events.purchase("o-2", days_ago=1, items=[("TEA", "tea", 1, "7.00")]))
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    first, second = await published(session, events.customer_id)
    assert first["type"] == "profile.updated" and first["subject"] == events.customer_id
    assert (first["data"]["version"], second["data"]["version"]) == (1, 2)
    assert second["data"]["changed"] == [
        "average_days_between_orders",
        "average_order_value",
        "last_purchase_at",
        "lifecycle_stage",
        "net_revenue",
        "orders",
    ]
    profile = second["data"]["profile"]
    assert (profile["orders"], profile["net_revenue"], profile["lifecycle_stage"]) == (2, "12.00", "repeat")


async def test_nothing_is_published_when_nothing_changed(session: AsyncSession, events: Events) -> None:
    purchase = events.purchase("o-1", days_ago=3, items=[("TEA", "tea", 1, "5.00")])
    await events.apply(session, purchase)
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    # A redelivered purchase and an exit from a segment never entered change nothing visible.
    await events.apply(session, purchase, events.segment("segment.exited", "vip", days_ago=1))
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    assert len(await published(session, events.customer_id)) == 1


async def test_personal_traits_never_leave_in_events(session: AsyncSession, events: Events) -> None:
    traits = {"email": "ann@example.com", "phone": "+33600000000", "name": "Ann", "city": "Lyon", "vip": True}
    await events.apply(session, events.identify("id-1", days_ago=1, traits=traits))
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    (message,) = await published(session, events.customer_id)
    assert message["data"]["profile"]["traits"] == {"city": "Lyon", "vip": True}
    raw = orjson.dumps(message).decode()
    assert "ann@example.com" not in raw and "+33600000000" not in raw and "Ann" not in raw


@pytest.mark.parametrize(
    ("orders_days_ago", "stage"),
    [
        ([], "prospect"),
        ([5], "new"),
        ([45], "active"),
        ([60, 5], "repeat"),
        ([80, 60, 40, 20, 5], "loyal"),
        ([100, 95], "at_risk"),
        ([400, 200], "churned"),
    ],
)
async def test_lifecycle_stage_follows_the_thresholds(
    session: AsyncSession, events: Events, orders_days_ago: list[int], stage: str
) -> None:
    await events.apply(session, events.identify("id-1", days_ago=500, traits={}))
    for n, days in enumerate(orders_days_ago):
        await events.apply(session, events.purchase(f"o-{n}", days_ago=days, items=[("TEA", "tea", 1, "5.00")]))
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    found = await session.execute(select(Customer.lifecycle_stage).where(Customer.customer_id == events.customer_id))
    assert found.scalar_one() == stage


async def test_a_customer_who_stops_buying_drifts_to_at_risk_then_churned(
    session: AsyncSession, events: Events
) -> None:
    await events.apply(session, events.purchase("o-1", days_ago=1, items=[("TEA", "tea", 1, "5.00")]))
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    stages = []
    for days_later in (20, 60, 100, 200, 201):
        now = Events.now + timedelta(days=days_later)
        await reevaluate_stages(session, settings=SETTINGS, now=now)
        await publish_all_changes(session, settings=SETTINGS, now=now)
    for message in await published(session, events.customer_id):
        stages.append((message["data"]["version"], message["data"]["profile"]["lifecycle_stage"]))
    assert stages == [(1, "new"), (2, "active"), (3, "at_risk"), (4, "churned")]


async def test_thresholds_are_settings(session: AsyncSession, events: Events) -> None:
    await events.apply(session, events.purchase("o-1", days_ago=10, items=[("TEA", "tea", 1, "5.00")]))
    strict = ProfilesSettings(consumers_enabled=False, at_risk_after_days=7, churned_after_days=30)
    await publish_all_changes(session, settings=strict, now=Events.now)
    found = await session.execute(select(Customer.lifecycle_stage).where(Customer.customer_id == events.customer_id))
    assert found.scalar_one() == "at_risk"


async def test_each_customer_in_a_publish_batch_gets_their_own_top_categories(
    session: AsyncSession, events: Events
) -> None:
    other = Events(f"cus-{uuid.uuid4().hex[:12]}")
    many: list[tuple[str, str | None, int, str]] = [(f"SKU-{n}", f"cat-{n}", n + 1, "1.00") for n in range(7)]
    # cat-6 is bought most; only the top five are published
    await events.apply(session, events.purchase("o-1", days_ago=1, items=many))
    await other.apply(
        session,
        other.purchase("o-1", days_ago=1, items=[("TEA", "tea", 1, "5.00"), ("MUG", "home", 1, "5.00")]),
        other.interaction("i-1", "product_view", days_ago=1, sku="MUG", category="home"),
    )
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    (mine,) = await published(session, events.customer_id)
    (theirs,) = await published(session, other.customer_id)
    assert mine["data"]["profile"]["top_categories"] == ["cat-6", "cat-5", "cat-4", "cat-3", "cat-2"]
    assert theirs["data"]["profile"]["top_categories"] == ["home", "tea"]  # ties broken by views, then key


async def test_every_dirty_profile_is_published_when_they_take_several_batches(session: AsyncSession) -> None:
    customers = [Events(f"cus-{uuid.uuid4().hex[:12]}") for _ in range(5)]
    for customer in customers:
        await customer.apply(session, customer.purchase("o-1", days_ago=1, items=[("TEA", "tea", 1, "5.00")]))
    small_batches = ProfilesSettings(consumers_enabled=False, publish_batch_size=2)
    assert await publish_all_changes(session, settings=small_batches, now=Events.now) >= 5
    for customer in customers:
        assert len(await published(session, customer.customer_id)) == 1
    dirty = await session.execute(
        select(Customer.customer_id).where(Customer.customer_id.in_([c.customer_id for c in customers]), Customer.dirty)
    )
    assert dirty.all() == []


async def test_the_publisher_writes_nothing_when_its_transaction_rolls_back(
    platform: TestPlatform, events: Events
) -> None:
    """Its claim, write-back and outbox rows are one transaction (sent straight to asyncpg, they were not)."""
    sessionmaker = async_sessionmaker(platform.engine("profiles"), expire_on_commit=False)
    async with sessionmaker() as session, session.begin():
        await session.execute(text("select 1"))  # as the consumer's processed rows do: BEGIN is sent
        await events.apply(session, events.purchase("o-1", days_ago=1, items=[("TEA", "tea", 1, "5.00")]))
    with pytest.raises(RuntimeError):
        async with sessionmaker() as session, session.begin():
            assert await publish_all_changes(session, settings=SETTINGS, now=Events.now) >= 1
            raise RuntimeError("the job fails after publishing")
    async with sessionmaker() as session:
        assert await published(session, events.customer_id) == []
        dirty = await session.execute(select(Customer.dirty).where(Customer.customer_id == events.customer_id))
        assert dirty.scalar_one() is True
    async with sessionmaker() as session, session.begin():
        assert await publish_all_changes(session, settings=SETTINGS, now=Events.now) >= 1
    async with sessionmaker() as session:
        assert len(await published(session, events.customer_id)) == 1


async def test_a_bounded_run_stops_and_the_next_continues_where_it_stopped(session: AsyncSession) -> None:
    customers = sorted((Events(f"cus-{uuid.uuid4().hex[:12]}") for _ in range(5)), key=lambda c: c.customer_id)
    for customer in customers:
        await customer.apply(session, customer.purchase("o-1", days_ago=1, items=[("TEA", "tea", 1, "5.00")]))
    small_batches = ProfilesSettings(consumers_enabled=False, publish_batch_size=2)
    ours = [c.customer_id for c in customers]
    await session.execute(text("update customers set dirty = false where not customer_id = any(:ours)"), {"ours": ours})
    count, after = await publish_changes(session, settings=small_batches, now=Events.now, max_profiles=2)
    assert (count, after) == (2, customers[1].customer_id)
    count, after = await publish_changes(session, settings=small_batches, now=Events.now, max_profiles=10, after=after)
    assert (count, after) == (3, "")
    for customer in customers:
        assert len(await published(session, customer.customer_id)) == 1
