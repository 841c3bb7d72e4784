"""Erasure through the broker: ingest consumes customer.erasure_requested and confirms on its topic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import ingest.main
import orjson
from ingest.config import IngestSettings
from sqlalchemy import text

from shared.envelope import new_event
from shared.testing import TestPlatform, eventually, producer, running_app
from shared.topics import ERASURE_CONFIRMATIONS, PRIVACY_ERASURES


async def test_erasure_request_is_applied_and_confirmed(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    customer = f"cus-erase-{uuid.uuid4().hex[:10]}"
    at = datetime.now(UTC).isoformat()
    identify = {"event_id": f"idn-{uuid.uuid4().hex}", "customer_id": customer, "occurred_at": at,
                "traits": {"email": "erase.me@example.com", "name": "Erin"}}  # fmt: skip
    request = {"request_id": f"req-{uuid.uuid4().hex}", "customer_id": customer, "requested_at": datetime.now(UTC)}
    erasure = new_event(type="customer.erasure_requested", source="cx.profiles", subject=customer, data=request)
    async with running_app(ingest.main.create_app(IngestSettings())) as api:
        assert (await api.post("/v1/identify", json=identify, headers=api_headers)).status_code == 202
        async with producer(platform.bootstrap) as kafka:
            await kafka.send_and_wait(PRIVACY_ERASURES, erasure.encode(), key=customer.encode())

        async def traits_gone() -> bool:
            async with platform.engine("ingest").connect() as conn:
                payload = await conn.scalar(
                    text("select payload::text from ingested_events where event_id = :e"), {"e": identify["event_id"]}
                )
            return payload is not None and "erase.me@example.com" not in payload

        assert await eventually(traits_gone, timeout=60)

        async def confirmation_published() -> dict[str, Any] | None:
            async with platform.engine("ingest").connect() as conn:
                payload = await conn.scalar(
                    text("select payload from outbox where topic = :t and key = :k and state = 'published'"),
                    {"t": ERASURE_CONFIRMATIONS["ingest"], "k": customer},
                )
            return orjson.loads(payload) if payload else None

        confirmation = await eventually(confirmation_published, timeout=120)
    assert confirmation["type"] == "erasure.confirmed"
    data = confirmation["data"]
    assert (data["request_id"], data["customer_id"], data["service"]) == (request["request_id"], customer, "ingest")
