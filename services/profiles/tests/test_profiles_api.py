"""The profiles HTTP API: get, list (filters, sorting, cursor pages), export, recommendations, erasure."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import profiles.main
import pytest
from profiles.config import ProfilesSettings
from profiles.recommendations import rebuild_recommendations
from profiles.schemas import CustomerProfile
from profiles.testing import Events
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.auth import generate_api_key, hash_api_key
from shared.envelope import Envelope
from shared.tables import api_keys
from shared.testing import TestPlatform, eventually, running_app
from shared.topics import PRIVACY_ERASURES


@pytest.fixture(scope="module")
async def api(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    # Settings are read here, after the platform fixture pointed the environment at the test database.
    async with running_app(profiles.main.create_app(ProfilesSettings(consumers_enabled=False))) as client:
        yield client


async def commit(platform: TestPlatform, *events: Envelope) -> None:
    async with async_sessionmaker(platform.engine("profiles"))() as session, session.begin():
        await Events.apply(session, *events)


async def key_with(platform: TestPlatform, scopes: list[str]) -> dict[str, str]:
    key_id, key = generate_api_key()
    async with platform.engine("profiles").begin() as conn:
        await conn.execute(
            api_keys.insert().values(key_id=key_id, key_hash=hash_api_key(key), name="test", scopes=scopes)
        )
    return {"Authorization": f"Bearer {key}"}


def customer(city: str, n: int) -> Events:
    return Events(f"cus-{city}-{n:02d}")


async def shop(platform: TestPlatform) -> str:
    """Twelve customers in a city of their own, with 1..12 orders of 10.00 each, the last 1..12 days ago."""
    city = f"city-{uuid.uuid4().hex[:8]}"
    for n in range(1, 13):
        events = customer(city, n)
        await commit(
            platform,
            events.identify(f"id-{n}", days_ago=100, traits={"city": city, "email": f"c{n}@example.com"}),
            *[
                events.purchase(f"o-{n}-{k}", days_ago=n + k, items=[("TEA" if n % 2 else "MUG", None, 1, "10.00")])
                for k in range(n)
            ],
            events.interaction(f"v-{n}", "product_view", days_ago=1, category="tea" if n % 2 else "home"),
        )
    return city


async def test_a_profile_has_the_contract_fields(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    events = Events(f"cus-{uuid.uuid4().hex[:12]}")
    await commit(
        platform,
        events.identify("id-1", days_ago=9, traits={"city": "Lyon", "email": "x@example.com"}),
        events.purchase("o-1", days_ago=5, items=[("TEA", "tea", 2, "5.00")]),
        events.feedback("f-1", "csat", 4, days_ago=4),
        events.tier("silver", days_ago=4),
    )
    answer = await api.get(f"/v1/customers/{events.customer_id}", headers=api_headers)
    assert answer.status_code == 200, answer.text
    profile = answer.json()
    assert profile["traits"] == {"city": "Lyon", "email": "x@example.com"}
    assert (profile["orders"], profile["net_revenue"], profile["average_order_value"]) == (1, "10.00", "10.00")
    assert profile["first_purchase_at"] == profile["last_purchase_at"] is not None
    assert profile["top_categories"] == ["tea"]
    assert profile["satisfaction"]["csat_avg"] == 4.0
    assert profile["loyalty_tier"] == "silver"
    assert profile["lifecycle_stage"] in {"new", "active"}
    assert profile["interaction_counts"] == {}
    # Encoded by the route itself (one query, orjson), it is still exactly the documented model.
    assert CustomerProfile.model_validate(profile).model_dump(mode="json") == profile
    assert answer.headers["content-type"] == "application/json"


async def test_unknown_customer_is_404_and_keys_are_checked(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    assert (await api.get("/v1/customers/nobody-here", headers=api_headers)).status_code == 404
    assert (await api.get("/v1/customers/nobody-here")).status_code == 401
    loyalty_only = await key_with(platform, ["loyalty:read"])
    assert (await api.get("/v1/customers/nobody-here", headers=loyalty_only)).status_code == 403
    reader = await key_with(platform, ["profiles:read"])
    assert (await api.get("/v1/customers/nobody-here", headers=reader)).status_code == 404
    assert (await api.delete("/v1/customers/nobody-here", headers=reader)).status_code == 403


async def test_list_filters_sorts_and_pages_with_a_cursor(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    city = await shop(platform)
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"city": city, "sort": "net_revenue", "order": "desc", "limit": 5}
    while True:
        page = await api.get("/v1/customers", params=params, headers=api_headers)
        assert page.status_code == 200, page.text
        seen += page.json()["items"]
        if page.json()["next_cursor"] is None:
            break
        params["cursor"] = page.json()["next_cursor"]
    assert [c["net_revenue"] for c in seen] == [f"{n * 10}.00" for n in range(12, 0, -1)]
    assert len({c["customer_id"] for c in seen}) == 12

    async def ids(**filters: Any) -> list[str]:
        answer = await api.get("/v1/customers", params={"city": city.upper(), **filters}, headers=api_headers)
        assert answer.status_code == 200, answer.text
        return [c["customer_id"].rsplit("-", 1)[1] for c in answer.json()["items"]]

    assert await ids(min_revenue="30", max_revenue="50") == ["03", "04", "05"]
    assert await ids(category="home", max_revenue="60") == ["02", "04", "06"]
    last_purchase_before = (Events.now.replace(microsecond=0) - _days(4)).isoformat()
    assert await ids(last_purchase_before=last_purchase_before, sort="last_purchase_at") == [
        "12",
        "11",
        "10",
        "09",
        "08",
        "07",
        "06",
        "05",
    ]

    async def loyal() -> bool:  # stored stages follow the publisher job within its interval
        return await ids(stage="loyal", max_revenue="70") == ["05", "06", "07"]

    assert await eventually(loyal)


def _days(n: int) -> Any:
    from datetime import timedelta

    return timedelta(days=n)


async def test_bad_list_parameters_are_422_naming_the_field(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, str | int], str]] = [
        ({"cursor": "garbage!!"}, "cursor"),
        ({"limit": 100000}, "limit"),
        ({"stage": "sleepy"}, "stage"),
        ({"sort": "email"}, "sort"),
        ({"min_revenue": "abc"}, "min_revenue"),
    ]
    for params, field in cases:
        answer = await api.get("/v1/customers", params=params, headers=api_headers)
        assert answer.status_code == 422, (params, answer.text)
        assert [e["field"] for e in answer.json()["errors"]] == [f"query.{field}"]


async def test_export_holds_everything_about_the_customer(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    events = Events(f"cus-{uuid.uuid4().hex[:12]}")
    anonymous_id = f"anon-{uuid.uuid4().hex}"
    await commit(
        platform,
        events.interaction("e-1", "product_view", days_ago=3, anonymous_id=anonymous_id, sku="TEA"),
        events.identify("e-2", days_ago=2, traits={"email": "e@example.com"}, anonymous_id=anonymous_id),
        events.purchase("e-3", days_ago=1, items=[("TEA", "tea", 1, "5.00")]),
        events.refund("e-4", "e-3", "5.00", days_ago=0),
        events.feedback("e-5", "nps", 10, days_ago=0),
        events.segment("segment.entered", "tea", days_ago=0),
    )
    answer = await api.get(f"/v1/customers/{events.customer_id}/export", headers=api_headers)
    assert answer.status_code == 200, answer.text
    exported = answer.json()
    assert exported["traits"][0]["value"] == "e@example.com"
    assert exported["orders"][0]["items"][0]["sku"] == "TEA"
    assert [
        len(exported[k]) for k in ("refunds", "interactions", "anonymous_ids", "feedback", "segment_memberships")
    ] == [
        1,
        1,
        1,
        1,
        1,
    ]
    assert (await api.get("/v1/customers/nobody-here/export", headers=api_headers)).status_code == 404


async def test_recommendations_come_from_what_others_bought_together(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    tag = uuid.uuid4().hex[:6]
    tea, pot, cup = f"TEA-{tag}", f"POT-{tag}", f"CUP-{tag}"
    for n in range(3):
        buyer = Events(f"cus-{tag}-{n}")
        await commit(
            platform, buyer.purchase(f"o-{tag}-{n}", days_ago=5, items=[(tea, "tea", 1, "5"), (pot, "tea", 1, "9")])
        )
    me = Events(f"cus-{tag}-me")
    await commit(platform, me.purchase(f"o-{tag}-me", days_ago=1, items=[(tea, "tea", 1, "5")]))
    await commit(platform, me.interaction(f"v-{tag}", "product_view", days_ago=1, sku=cup))
    async with async_sessionmaker(platform.engine("profiles"))() as session, session.begin():
        await rebuild_recommendations(session, settings=ProfilesSettings())
    answer = await api.get(f"/v1/customers/{me.customer_id}/recommendations", headers=api_headers)
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert items[0]["sku"] == pot
    assert items[0]["reason"] == f"bought together with Product {tea}"
    assert tea not in {i["sku"] for i in items}
    newcomer = await api.get("/v1/customers/somebody-new/recommendations", headers=api_headers)
    assert newcomer.status_code == 200
    assert {i["reason"] for i in newcomer.json()["items"]} == {"popular with other customers"}
    too_many = await api.get(f"/v1/customers/{me.customer_id}/recommendations?limit=1000", headers=api_headers)
    assert too_many.status_code == 422


async def test_delete_records_an_erasure_request_and_publishes_it(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    events = Events(f"cus-{uuid.uuid4().hex[:12]}")
    await commit(platform, events.identify("id-1", days_ago=1, traits={"email": "gone@example.com"}))
    answer = await api.delete(f"/v1/customers/{events.customer_id}", headers=api_headers)
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["request_id"]
    again = await api.delete(f"/v1/customers/{events.customer_id}", headers=api_headers)
    assert again.json()["request_id"] == request_id  # a pending request is not duplicated
    status = await api.get(f"/v1/erasures/{request_id}", headers=api_headers)
    assert status.status_code == 200
    assert status.json()["status"] == "pending"
    assert status.json()["waiting_for"] == ["feedback", "ingest", "loyalty", "profiles", "segments"]
    async with platform.engine("profiles").connect() as conn:
        topics = await conn.execute(
            text("select topic from outbox where key = :key and payload like '%customer.erasure_requested%'"),
            {"key": events.customer_id},
        )
        assert topics.scalars().all() == [PRIVACY_ERASURES]
    assert (await api.get("/v1/erasures/no-such-request", headers=api_headers)).status_code == 404
