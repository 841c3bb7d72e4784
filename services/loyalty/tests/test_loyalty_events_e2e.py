"""Loyalty consuming the real topics: refunds before purchases, redeliveries, identify, erasure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import loyalty.main
from loyalty.rules import reset_program
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.envelope import Envelope, new_event
from shared.testing import TestPlatform, eventually, producer, read_topic, running_app
from shared.topics import ERASURE_CONFIRMATIONS, IDENTITIES, PRIVACY_ERASURES, PURCHASES


def event(kind: str, data: dict[str, Any]) -> Envelope:
    return new_event(type=kind, source="test", subject=data["customer_id"], data=data, id=data.get("event_id"))


async def test_loyalty_applies_each_topic_once_in_any_order(platform: TestPlatform) -> None:
    buyer, newcomer, leaver = (f"cus-{uuid.uuid4().hex[:12]}" for _ in range(3))
    now = datetime.now(UTC).isoformat()
    order = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "order_id": f"ord-{uuid.uuid4().hex[:8]}",
        "customer_id": buyer,
        "occurred_at": now,
        "currency": "USD",
        "channel": "web",
        "store_id": None,
        "items": [{"sku": "A", "name": None, "category": None, "quantity": 4, "unit_price": "10.00"}],
        "total": "40.00",
    }
    refund_id = f"ref-{uuid.uuid4().hex}"
    refund = {
        "event_id": refund_id,
        "refund_id": refund_id,
        "order_id": order["order_id"],
        "customer_id": buyer,
        "occurred_at": now,
        "currency": "USD",
        "items": [{"sku": "A", "quantity": 1, "unit_price": "10.00", "category": None}],
        "amount": "10.00",
    }
    # The erasure overtakes the leaver's purchase from before it: the purchase must not bring the member back.
    erasure = {"request_id": "q1", "customer_id": leaver, "requested_at": datetime.now(UTC).isoformat()}
    leaver_order = order | {"event_id": f"evt-{uuid.uuid4().hex}", "customer_id": leaver}
    messages = [
        (PURCHASES, event("purchase.refunded", refund)),  # the refund overtakes its purchase
        (PURCHASES, event("purchase.completed", order)),
        (PURCHASES, event("purchase.completed", order)),  # redelivered
        (IDENTITIES, event("customer.identified", {"event_id": "i1", "customer_id": newcomer, "traits": {}})),
        (PRIVACY_ERASURES, event("customer.erasure_requested", erasure)),
        (PURCHASES, event("purchase.completed", leaver_order)),
    ]
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        await reset_program(session)  # the expected points assume the default rules
    async with producer(platform.bootstrap) as kafka:
        for topic, envelope in messages:
            await kafka.send_and_wait(topic, envelope.encode(), key=envelope.subject.encode())

    engine = platform.engine("loyalty")

    async def members() -> dict[str, int]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT customer_id, points FROM members WHERE customer_id = ANY(:ids)"),
                {"ids": [buyer, newcomer, leaver]},
            )
            return {row[0]: int(row[1]) for row in rows}

    async def published(kinds: set[str]) -> bool:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT payload, state FROM outbox WHERE key = :c AND topic = 'loyalty.accounts.v1'"), {"c": buyer}
            )
            seen = {Envelope.model_validate_json(row[0]).type for row in rows if row[1] == "published"}
        return kinds <= seen

    async def leaver_purchase_handled() -> bool:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT 1 FROM processed_messages WHERE consumer = 'loyalty' AND event_id = :id"),
                {"id": leaver_order["event_id"]},
            )
        return found is not None

    async with running_app(loyalty.main.create_app()):
        await eventually(leaver_purchase_handled, timeout=120)
        expected = {buyer: 30, newcomer: 0}
        assert await eventually(lambda: _when(members, expected), timeout=120) == expected
        await eventually(lambda: published({"points.earned", "points.reversed"}), timeout=120)
        # Other tests share the topic: only this customer's confirmation counts.
        [confirmation] = await read_topic(
            platform.bootstrap,
            ERASURE_CONFIRMATIONS["loyalty"],
            expect=1,
            matching=lambda record: Envelope.decode(record.value).data.get("customer_id") == leaver,
        )
    confirmed = Envelope.decode(confirmation.value)
    assert confirmed.type == "erasure.confirmed"
    assert (confirmed.data["customer_id"], confirmed.data["service"]) == (leaver, "loyalty")


async def _when(read: Any, expected: dict[str, int]) -> dict[str, int] | None:
    current: dict[str, int] = await read()
    return current if current == expected else None
