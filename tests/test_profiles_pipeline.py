"""Profiles end to end through the broker: events in, profile.updated out; erasure round trip."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import profiles.main
import pytest
from profiles.config import ProfilesSettings
from profiles.testing import Events

from shared.envelope import Envelope, new_event
from shared.testing import TestPlatform, eventually, producer, read_topic, running_app
from shared.topics import ERASURE_CONFIRMATIONS, IDENTITIES, INTERACTIONS, PRIVACY_ERASURES, PROFILES, PURCHASES

TOPIC_OF = {"purchase.completed": PURCHASES, "interaction.recorded": INTERACTIONS, "customer.identified": IDENTITIES}


@pytest.fixture(scope="module")
async def api(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(profiles.main.create_app(ProfilesSettings(publish_interval_seconds=0.1))) as client:
        yield client


async def send(platform: TestPlatform, *events: tuple[str, Envelope]) -> None:
    async with producer(platform.bootstrap) as kafka:
        for topic, event in events:
            await kafka.send_and_wait(topic, event.encode(), key=event.subject.encode())


async def messages(platform: TestPlatform, topic: str, key: str, expect: int) -> list[dict[str, Any]]:
    # Everything for this key that is on the topic (other tests' keys filtered out while reading).
    records = await read_topic(
        platform.bootstrap, topic, expect=10**9, timeout=4.0, matching=lambda r: r.key == key.encode()
    )
    found = [orjson.loads(r.value) for r in records]
    return found if len(found) >= expect else []


async def test_events_from_the_broker_build_the_profile_and_publish_it(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    events = Events(f"cus-{uuid.uuid4().hex[:12]}")
    anonymous_id = f"anon-{uuid.uuid4().hex}"
    stream = [
        events.interaction("p-1", "product_view", days_ago=2, anonymous_id=anonymous_id, sku="TEA"),
        events.identify(
            "p-2", days_ago=1, traits={"email": "p@example.com", "city": "Nantes"}, anonymous_id=anonymous_id
        ),
        events.purchase("p-3", days_ago=1, items=[("TEA", "tea", 2, "4.50")]),
    ]
    await send(platform, *[(TOPIC_OF[e.type], e) for e in stream])

    async def profile() -> dict[str, Any] | None:
        answer = await api.get(f"/v1/customers/{events.customer_id}", headers=api_headers)
        body: dict[str, Any] = answer.json()
        return body if answer.status_code == 200 and body["orders"] == 1 and body["interaction_counts"] else None

    found = await eventually(profile)
    assert (found["net_revenue"], found["interaction_counts"], found["traits"]["city"]) == (
        "9.00",
        {"product_view": 1},
        "Nantes",
    )

    async def latest_published() -> list[dict[str, Any]] | None:
        found = await messages(platform, PROFILES, events.customer_id, 1)
        return found if found and found[-1]["data"]["profile"]["orders"] == 1 else None

    published = await eventually(latest_published, timeout=90)
    versions = [m["data"]["version"] for m in published]
    assert versions == sorted(set(versions))
    assert published[-1]["data"]["profile"]["orders"] == 1
    assert "p@example.com" not in orjson.dumps(published).decode()


async def test_erasure_completes_when_every_service_confirmed(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    events = Events(f"cus-{uuid.uuid4().hex[:12]}")
    await send(platform, (IDENTITIES, events.identify("q-1", days_ago=1, traits={"email": "q@example.com"})))
    assert await eventually(lambda: _status(api, f"/v1/customers/{events.customer_id}", api_headers, 200)), (
        "profile never appeared"
    )
    answer = await api.delete(f"/v1/customers/{events.customer_id}", headers=api_headers)
    assert answer.status_code == 202
    request_id = answer.json()["request_id"]
    # Profiles erases its own share on the request it published; the other services are simulated here.
    assert await eventually(lambda: _status(api, f"/v1/customers/{events.customer_id}", api_headers, 404))
    others = [s for s in ERASURE_CONFIRMATIONS if s != "profiles"]
    now = datetime.now(UTC).isoformat()
    await send(
        platform,
        *[
            (
                ERASURE_CONFIRMATIONS[service],
                new_event(
                    type="erasure.confirmed",
                    source=f"cx.{service}",
                    subject=events.customer_id,
                    data={
                        "request_id": request_id,
                        "customer_id": events.customer_id,
                        "service": service,
                        "confirmed_at": now,
                    },
                ),
            )
            for service in others
        ],
    )

    async def completed() -> dict[str, Any] | None:
        status = (await api.get(f"/v1/erasures/{request_id}", headers=api_headers)).json()
        return status if status["status"] == "completed" else None

    status = await eventually(completed)
    assert [c["service"] for c in status["confirmed"]] == sorted(ERASURE_CONFIRMATIONS)
    erased = await eventually(lambda: messages(platform, PRIVACY_ERASURES, events.customer_id, 2))
    assert [m["type"] for m in erased] == ["customer.erasure_requested", "customer.erased"]


async def _status(api: httpx.AsyncClient, path: str, headers: dict[str, str], expected: int) -> bool:
    return (await api.get(path, headers=headers)).status_code == expected
