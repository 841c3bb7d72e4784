"""Through the broker: profile.updated and purchase.completed in, exact segment events out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import segments.main
from segments.config import SegmentsSettings
from sqlalchemy import text

from shared.envelope import Envelope, new_event
from shared.testing import TestPlatform, eventually, producer, read_topic, running_app
from shared.topics import PROFILES, PURCHASES, SEGMENT_MEMBERSHIP


def profile_updated(customer_id: str, version: int, country: str) -> Envelope:
    data = {
        "customer_id": customer_id,
        "version": version,
        "changed": ["traits"],
        "occurred_at": datetime.now(UTC).isoformat(),
        "profile": {"traits": {"country": country}, "lifecycle_stage": "active"},
    }
    return new_event(type="profile.updated", source="test", subject=customer_id, data=data)


async def test_profile_changes_become_exactly_one_event_each(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    customer = f"e2e-{uuid.uuid4().hex[:10]}"
    key = f"e2e-{uuid.uuid4().hex[:8]}"
    purchase = new_event(
        type="purchase.completed",
        source="test",
        subject=customer,
        data={
            "event_id": "e1",
            "order_id": f"{customer}-o1",
            "customer_id": customer,
            "occurred_at": datetime.now(UTC).isoformat(),
            "currency": "USD",
            "channel": "web",
            "store_id": None,
            "items": [],
            "total": "25.00",
        },
    )
    settings = SegmentsSettings(recompute_interval_seconds=0)
    async with running_app(segments.main.create_app(settings)) as api:
        rule = {
            "all": [{"field": "traits.country", "op": "eq", "value": "DE"}, {"field": "rfm.frequency", "op": "exists"}]
        }
        created = await api.post("/v1/segments", json={"key": key, "name": "e2e", "rule": rule}, headers=api_headers)
        assert created.status_code == 201, created.text
        await api.post("/v1/recomputes", json={}, headers=api_headers)  # cut-points for the newcomer's RFM
        v2, v1, v3 = (
            profile_updated(customer, 2, "DE"),
            profile_updated(customer, 1, "FR"),
            profile_updated(customer, 3, "FR"),
        )
        async with producer(platform.bootstrap) as kafka:
            for topic, event in (
                (PURCHASES, purchase),
                (PURCHASES, purchase),
                (PROFILES, v2),
                (PROFILES, v1),
                (PROFILES, v2),
            ):
                await kafka.send_and_wait(topic, event.encode(), key=customer.encode())

        async def in_segment() -> bool:
            answer = await api.get(f"/v1/customers/{customer}/segments", headers=api_headers)
            return key in {s["segment_key"] for s in answer.json()["segments"]}

        await eventually(in_segment, timeout=120)
        async with producer(platform.bootstrap) as kafka:
            await kafka.send_and_wait(PROFILES, v3.encode(), key=customer.encode())
            await kafka.send_and_wait(PROFILES, v2.encode(), key=customer.encode())

        async def left() -> bool:
            return not await in_segment()

        await eventually(left, timeout=120)
        await asyncio.sleep(1.0)
        engine = platform.engine("segments")

        async def published() -> bool:
            async with engine.connect() as conn:
                pending = await conn.execute(
                    text("SELECT count(*) FROM outbox WHERE key = :k AND state = 'pending'"), {"k": customer}
                )
                return bool(pending.scalar_one() == 0)

        await eventually(published, timeout=120)
    # One more than expected, so a duplicate would show; other tests' events are filtered out by key.
    records = await read_topic(
        platform.bootstrap, SEGMENT_MEMBERSHIP, expect=4, timeout=10, matching=lambda r: r.key == customer.encode()
    )
    ours = [Envelope.decode(r.value) for r in records]
    changes = [(e.type, e.data["segment_key"]) for e in ours if e.data["segment_key"] == key]
    assert changes == [("segment.entered", key), ("segment.exited", key)]
    # The purchase put the customer in exactly one RFM segment, once, despite arriving twice.
    rfm = [e for e in ours if e.data["kind"] == "rfm"]
    assert len(rfm) == 1 and rfm[0].type == "segment.entered"
