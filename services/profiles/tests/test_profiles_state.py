"""Profile state from events: purchase statistics, preferences, identity, loyalty, feedback, segments."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from profiles import queries
from profiles.config import ProfilesSettings
from profiles.models import Affinity, Interaction
from profiles.portrait import publish_all_changes
from profiles.testing import Events
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.envelope import Envelope
from shared.testing import TestPlatform, rollback_session

SETTINGS = ProfilesSettings(consumers_enabled=False)


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("profiles")) as session:
        yield session


@pytest.fixture
def events() -> Events:
    return Events(f"cus-{uuid.uuid4().hex[:12]}")


async def view(session: AsyncSession, customer_id: str) -> dict[str, Any]:
    found = await queries.customer_view(session, customer_id=customer_id, settings=SETTINGS, now=Events.now)
    assert found is not None
    return found


def history(events: Events, anonymous_id: str) -> list[Envelope]:
    """A customer's life: browsing before login, identification, orders, a refund, loyalty, feedback, segments."""
    return [
        events.interaction("i-1", "product_view", days_ago=40, anonymous_id=anonymous_id, sku="TEA", category="tea"),
        events.interaction("i-2", "product_view", days_ago=39, anonymous_id=anonymous_id, sku="MUG", category="home"),
        events.identify(
            "id-1", days_ago=38, traits={"email": "a@example.com", "city": "Lyon"}, anonymous_id=anonymous_id
        ),
        events.identify("id-2", days_ago=10, traits={"city": "Paris", "name": "Ann Example"}),
        events.purchase("o-1", days_ago=38, items=[("TEA", "tea", 2, "5.00"), ("MUG", "home", 1, "12.00")]),
        events.purchase("o-2", days_ago=20, items=[("TEA", "tea", 1, "5.00")], channel="store"),
        events.purchase("o-3", days_ago=2, items=[("POT", "home", 1, "30.00")], channel="app"),
        events.refund("r-1", "o-3", "30.00", days_ago=1),
        events.interaction("i-3", "add_to_cart", days_ago=1, sku="KETTLE", category="home"),
        events.interaction("i-4", "email_open", days_ago=0.5, channel="email"),
        events.points("points.earned", 1, 22, days_ago=38),
        events.points("points.earned", 2, 27, days_ago=20),
        events.points("points.redeemed", 3, 7, days_ago=5),
        events.tier("silver", days_ago=20),
        events.tier("gold", days_ago=3),
        events.feedback("f-1", "nps", 6, days_ago=15),
        events.feedback("f-2", "nps", 9, days_ago=4),
        events.feedback("f-3", "csat", 4, days_ago=4),
        events.feedback("f-4", "csat", 5, days_ago=3),
        events.segment("segment.entered", "tea-lovers", days_ago=19),
        events.segment("segment.entered", "big-spenders", days_ago=10),
        events.segment("segment.exited", "big-spenders", days_ago=1),
    ]


async def test_purchases_give_orders_net_revenue_and_timing(session: AsyncSession, events: Events) -> None:
    await events.apply(session, *history(events, "anon-" + uuid.uuid4().hex))
    profile = await view(session, events.customer_id)
    assert profile["orders"] == 3
    assert profile["net_revenue"] == "27.00"  # 22 + 5 + 30 - 30 refunded
    assert profile["gross_revenue"] == "57.00"
    assert profile["refunds"] == 1
    assert profile["average_order_value"] == "9.00"
    assert profile["currency"] == "USD"
    assert profile["average_days_between_orders"] == 18.0
    assert profile["first_purchase_at"] == (Events.now.replace(day=Events.now.day) - _days(38)).isoformat()
    assert profile["lifecycle_stage"] == "repeat"


def _days(n: float) -> Any:
    from datetime import timedelta

    return timedelta(days=n)


async def test_purchases_weigh_more_than_views_in_preferences(session: AsyncSession, events: Events) -> None:
    await events.apply(
        session,
        events.purchase("o-1", days_ago=5, items=[("TEA", "tea", 1, "5.00")]),
        *[events.interaction(f"v-{n}", "product_view", days_ago=1, sku="SOCK", category="clothes") for n in range(2)],
    )
    profile = await view(session, events.customer_id)
    assert profile["top_categories"] == ["tea", "clothes"]  # one purchase (3) beats two views (2)
    assert profile["category_preferences"][0] == {"category": "tea", "purchased": 1, "views": 0, "score": 3.0}


async def test_everything_else_lands_in_the_profile(session: AsyncSession, events: Events) -> None:
    anonymous_id = "anon-" + uuid.uuid4().hex
    await events.apply(session, *history(events, anonymous_id))
    profile = await view(session, events.customer_id)
    assert profile["traits"] == {"city": "Paris", "email": "a@example.com", "name": "Ann Example"}
    assert profile["interaction_counts"] == {"add_to_cart": 1, "email_open": 1, "product_view": 2}
    assert profile["last_seen_at"] == (Events.now - _days(0.5)).isoformat()
    assert profile["loyalty_points"] == 7
    assert profile["loyalty_tier"] == "gold"
    assert profile["satisfaction"]["nps_last"] == 9
    assert profile["satisfaction"]["csat_avg"] == 4.5
    assert profile["segments"] == ["tea-lovers"]
    assert profile["channel_preferences"]["orders"] == {"app": 1, "store": 1, "web": 1}
    assert profile["preferred_channels"][0] == "web"


async def test_identify_joins_the_anonymous_history_once(session: AsyncSession, events: Events) -> None:
    anonymous_id = "anon-" + uuid.uuid4().hex
    browse = events.interaction("a-1", "product_view", days_ago=3, anonymous_id=anonymous_id, sku="TEA")
    login = events.identify("id-1", days_ago=2, traits={}, anonymous_id=anonymous_id)
    later = events.interaction("a-2", "page_view", days_ago=1, anonymous_id=anonymous_id)
    await events.apply(session, browse, login, login, later, later)
    owners = await session.execute(select(Interaction.customer_id).where(Interaction.anonymous_id == anonymous_id))
    assert set(owners.scalars()) == {events.customer_id}
    profile = await view(session, events.customer_id)
    assert profile["interaction_counts"] == {"page_view": 1, "product_view": 1}
    assert profile["product_preferences"] == [{"sku": "TEA", "purchased": 0, "views": 1, "score": 1.0}]


async def test_an_anonymous_id_stays_with_the_first_customer_it_was_linked_to(
    session: AsyncSession, events: Events
) -> None:
    anonymous_id = "anon-" + uuid.uuid4().hex
    other = Events(events.customer_id + "-other")
    await events.apply(
        session,
        events.interaction("b-1", "page_view", days_ago=3, anonymous_id=anonymous_id),
        events.identify("id-1", days_ago=2, traits={}, anonymous_id=anonymous_id),
        other.identify("id-2", days_ago=1, traits={}, anonymous_id=anonymous_id),
    )
    assert (await view(session, events.customer_id))["interaction_counts"] == {"page_view": 1}
    assert (await view(session, other.customer_id))["interaction_counts"] == {}


async def test_the_same_events_in_any_order_and_repeated_give_the_same_profile(
    platform: TestPlatform, events: Events
) -> None:
    anonymous_id = "anon-" + uuid.uuid4().hex
    stream = history(events, anonymous_id)
    in_order = await _replay(platform, events, stream)
    rng = random.Random(5)
    for _ in range(3):
        shuffled = stream + rng.sample(stream, len(stream) // 2)
        rng.shuffle(shuffled)
        assert await _replay(platform, events, shuffled) == in_order


async def _replay(platform: TestPlatform, events: Events, stream: list[Envelope]) -> dict[str, Any]:
    async with rollback_session(platform.engine("profiles")) as session:
        await events.apply(session, *stream)
        await publish_all_changes(session, settings=SETTINGS, now=Events.now)
        profile = await view(session, events.customer_id)
        affinities = await session.execute(
            select(Affinity.kind, Affinity.key, Affinity.purchased, Affinity.views)
            .where(Affinity.customer_id == events.customer_id)
            .order_by(Affinity.kind, Affinity.key)
        )
        profile.pop("updated_at")
        profile.pop("version")  # how many times it was published depends on the batching, not the facts
        return {"profile": profile, "affinities": [tuple(row) for row in affinities]}


async def test_late_loyalty_events_do_not_overwrite_newer_ones(session: AsyncSession, events: Events) -> None:
    await events.apply(
        session,
        events.points("points.expired", 9, 0, days_ago=1),
        events.points("points.earned", 4, 120, days_ago=30),
        events.tier("gold", days_ago=1),
        events.tier("silver", days_ago=30),
    )
    profile = await view(session, events.customer_id)
    assert (profile["loyalty_points"], profile["loyalty_tier"]) == (0, "gold")


async def test_events_that_can_never_apply_are_refused(session: AsyncSession, events: Events) -> None:
    nobody = events.interaction("n-1", "page_view", days_ago=1)
    nobody.data["customer_id"] = None
    with pytest.raises(ValueError):
        await events.apply(session, nobody)
    broken = events.purchase("o-1", days_ago=1, items=[("TEA", "tea", 1, "5.00")])
    broken.data["items"] = []
    with pytest.raises(ValueError):
        await events.apply(session, broken)


async def _replay_batched(
    platform: TestPlatform, customers: list[Events], stream: list[Envelope], *, batch_size: int | None
) -> dict[str, Any]:
    async with rollback_session(platform.engine("profiles")) as session:
        if batch_size is None:
            await Events.apply(session, *stream)
        else:
            await Events.apply_batched(session, *stream, batch_size=batch_size)
        await publish_all_changes(session, settings=SETTINGS, now=Events.now)
        found: dict[str, Any] = {}
        for events in customers:
            profile = await view(session, events.customer_id)
            profile.pop("updated_at")
            profile.pop("version")
            affinities = await session.execute(
                select(Affinity.kind, Affinity.key, Affinity.purchased, Affinity.views)
                .where(Affinity.customer_id == events.customer_id)
                .order_by(Affinity.kind, Affinity.key)
            )
            found[events.customer_id] = {"profile": profile, "affinities": [tuple(row) for row in affinities]}
        return found


async def test_big_batches_give_the_same_profiles_as_one_event_at_a_time(platform: TestPlatform) -> None:
    run = uuid.uuid4().hex[:8]
    customers = [Events(f"cus-batch-{run}-{n}") for n in range(4)]
    stream = [
        event
        for n, events in enumerate(customers)
        for event in [
            *history(events, f"anon-{run}-{n}"),
            events.purchase(f"o-x-{n}", days_ago=1, items=[("TEA", "tea", 3, "4.00")], currency="EUR"),
            events.feedback(f"f-x-{n}", "rating", 3, days_ago=2),
            events.feedback(f"f-y-{n}", "complaint", None, days_ago=2),
            events.identify(f"id-x-{n}", days_ago=10, traits={"city": "Oslo"}),  # same time as id-2: id wins
        ]
    ]
    rng = random.Random(11)
    shuffled = stream + rng.sample(stream, len(stream) // 2)
    rng.shuffle(shuffled)
    one_by_one = await _replay_batched(platform, customers, shuffled, batch_size=None)
    assert one_by_one[customers[0].customer_id]["profile"]["orders"] == 4
    for batch_size in (len(shuffled), 7):
        assert await _replay_batched(platform, customers, shuffled, batch_size=batch_size) == one_by_one


async def test_times_with_any_utc_offset_count_as_the_same_instants(session: AsyncSession, events: Events) -> None:
    early = events.purchase("o-1", days_ago=10, items=[("TEA", "tea", 1, "5.00")])
    late = events.purchase("o-2", days_ago=2, items=[("TEA", "tea", 1, "5.00")])
    paris = timezone(timedelta(hours=2))
    for purchase in (early, late):  # the same instants, written in +02:00 and in -05:00
        at = datetime.fromisoformat(purchase.data["occurred_at"])
        offset = paris if purchase is early else timezone(timedelta(hours=-5))
        purchase.data["occurred_at"] = at.astimezone(offset).isoformat()
    await Events.apply_batched(session, late, early)
    profile = await view(session, events.customer_id)
    assert profile["first_purchase_at"] == (Events.now - timedelta(days=10)).isoformat()
    assert profile["last_purchase_at"] == (Events.now - timedelta(days=2)).isoformat()
    assert profile["average_days_between_orders"] == 8.0


async def test_the_currency_with_most_orders_is_shown_ties_alphabetical(session: AsyncSession, events: Events) -> None:
    other = Events(f"cus-{uuid.uuid4().hex[:12]}")
    await Events.apply_batched(
        session,
        events.purchase("o-1", days_ago=3, items=[("TEA", "tea", 1, "5.00")], currency="USD"),
        events.purchase("o-2", days_ago=2, items=[("TEA", "tea", 1, "7.00")], currency="USD"),
        events.purchase("o-3", days_ago=1, items=[("TEA", "tea", 1, "9.00")], currency="EUR"),
        other.purchase("o-1", days_ago=2, items=[("TEA", "tea", 1, "5.00")], currency="USD"),
        other.purchase("o-2", days_ago=1, items=[("TEA", "tea", 1, "6.00")], currency="EUR"),
    )
    mine, theirs = await view(session, events.customer_id), await view(session, other.customer_id)
    assert (mine["currency"], mine["net_revenue"], mine["orders"]) == ("USD", "12.00", 3)
    assert (theirs["currency"], theirs["net_revenue"]) == ("EUR", "6.00")
    await events.apply(session, events.refund("r-1", "o-3", "9.00", days_ago=0.5))
    assert (await view(session, events.customer_id))["currency"] == "USD"
