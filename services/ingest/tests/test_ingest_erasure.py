"""Erasure: a customer's personal data leaves ingest's tables, and ingest confirms it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
from ingest.handlers import erase_customer_data
from ingest.schemas import Limits
from ingest.service import ingest_events
from sqlalchemy import text

from shared.envelope import new_event
from shared.testing import TestPlatform, rollback_session
from shared.topics import ERASURE_CONFIRMATIONS


def limits() -> Limits:
    """Fresh each time: `now` bounds how far in the future an event may be."""
    return Limits(
        now=datetime.now(UTC),
        max_future_skew=timedelta(minutes=5),
        interaction_types=frozenset({"search"}),
        max_properties_bytes=16_384,
        max_properties_keys=100,
    )


async def test_erasure_anonymises_the_customers_events_and_is_confirmed(platform: TestPlatform) -> None:
    customer, anonymous, other = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("cus", "anon", "cus"))
    at, tag = datetime.now(UTC).isoformat(), uuid.uuid4().hex
    events: list[tuple[str | None, object]] = [
        ("identify", {"event_id": f"i-{tag}", "customer_id": customer, "anonymous_id": anonymous,
                      "occurred_at": at, "traits": {"email": "ada@example.com", "name": "Ada", "city": "London"}}),
        ("interaction", {"event_id": f"s-{tag}", "anonymous_id": anonymous, "occurred_at": at,
                         "type": "search", "properties": {"query": "ada lovelace biography"}}),
        ("purchase", {"event_id": f"p-{tag}", "order_id": f"o-{tag}", "customer_id": customer,
                      "occurred_at": at, "currency": "USD", "items": [{"sku": "A", "quantity": 1, "unit_price": 5}]}),
        ("identify", {"event_id": f"j-{tag}", "customer_id": other, "occurred_at": at,
                      "traits": {"email": "bob@example.com"}}),
    ]  # fmt: skip
    async with rollback_session(platform.engine("ingest")) as session:
        await session.execute(text("select 1"))  # the transaction begins before ingest uses its connection
        connection = (await (await session.connection()).get_raw_connection()).driver_connection
        results = await ingest_events(
            connection, source="erasure-test", events_in=events, limits=limits(), max_message_bytes=1_048_576
        )
        assert {r.status for r in results} == {"accepted"}
        request = {"request_id": "req-1", "customer_id": customer, "requested_at": at}
        erasure = new_event(type="customer.erasure_requested", source="cx.profiles", subject=customer, data=request)
        await erase_customer_data(session, erasure)
        await erase_customer_data(session, erasure)  # a redelivery changes nothing more

        rows = (
            await session.execute(
                text("select customer_key, payload::text from ingested_events where source = 'erasure-test'")
            )
        ).all()
        everything = " ".join(f"{key} {payload}" for key, payload in rows)
        for personal in (customer, anonymous, "ada@example.com", "Ada", "lovelace"):
            assert personal not in everything
        assert "bob@example.com" in everything
        purchase = next(orjson.loads(p) for _, p in rows if "items" in orjson.loads(p))
        assert purchase["total"] == "5.00"  # anonymous aggregates keep their amounts
        queued = (await session.execute(text("select topic, key, payload from outbox"))).all()
        assert not [row for row in queued if row.key in (customer, anonymous) and "erasures" not in row.topic]
        confirmations = [orjson.loads(row.payload) for row in queued if row.topic == ERASURE_CONFIRMATIONS["ingest"]]
        assert [c["data"]["request_id"] for c in confirmations if c["subject"] == customer] == ["req-1", "req-1"]
        assert confirmations[0]["type"] == "erasure.confirmed"
        assert confirmations[0]["data"]["service"] == "ingest"
