"""Purchases and refunds posted to ingest move loyalty's balance; identify enrols a member."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import ingest.main
import loyalty.main
from loyalty.rules import reset_program
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.testing import TestPlatform, eventually, running_app
from tests.support import purchase


async def test_refund_posted_to_ingest_reverses_the_points_of_the_refunded_items(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    body = purchase(
        total="60.00",
        items=[
            {"sku": "MUG", "name": "Mug", "category": "kitchen", "quantity": 2, "unit_price": "20.00"},
            {"sku": "TEA", "name": "Tea", "category": "food", "quantity": 1, "unit_price": "20.00"},
        ],
    )
    customer_id = str(body["customer_id"])
    refund = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "order_id": body["order_id"],
        "customer_id": customer_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "currency": "USD",
        "items": [{"sku": "MUG", "quantity": 1}],
    }
    newcomer = f"cus-{uuid.uuid4().hex[:12]}"
    identify = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "customer_id": newcomer,
        "occurred_at": datetime.now(UTC).isoformat(),
        "traits": {"city": "Lyon"},
    }
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        await reset_program(session)  # the expected points assume the default rules
    async with (
        running_app(ingest.main.create_app()) as ingest_api,
        running_app(loyalty.main.create_app()) as loyalty_api,
    ):
        for path, payload in (("/v1/purchases", body), ("/v1/refunds", refund), ("/v1/identify", identify)):
            answer = await ingest_api.post(path, json=payload, headers=api_headers)
            assert answer.status_code == 202, answer.text

        async def points(customer: str, expected: int) -> dict[str, Any] | None:
            member = await loyalty_api.get(f"/v1/members/{customer}", headers=api_headers)
            return member.json() if member.status_code == 200 and member.json()["points"] == expected else None

        await eventually(lambda: points(customer_id, 40), timeout=120)  # 60 earned, 20 reversed
        await eventually(lambda: points(newcomer, 0), timeout=120)
        ledger = await _transactions(loyalty_api, customer_id, api_headers)
    assert [(entry["kind"], entry["points"]) for entry in ledger] == [("reverse", -20), ("earn", 60)]


async def _transactions(client: httpx.AsyncClient, customer_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    page = await client.get(f"/v1/members/{customer_id}/transactions", headers=headers)
    items: list[dict[str, Any]] = page.json()["items"]
    return items
