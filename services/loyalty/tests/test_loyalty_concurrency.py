"""Redemptions under concurrency, through the HTTP app against the real database."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import loyalty.main
from fastapi import FastAPI
from loyalty import service
from loyalty.config import LoyaltySettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.testing import TestPlatform, running_app


async def member_with(platform: TestPlatform, points: int) -> str:
    customer_id = f"cus-{uuid.uuid4().hex[:12]}"
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        await service.enroll(session, customer_id=customer_id)
        await service.adjust(session, customer_id=customer_id, points=points, reason="test balance")
    return customer_id


async def ledger(platform: TestPlatform, customer_id: str) -> tuple[int, int, int, int]:
    """(balance, redeem entries, lowest balance_after ever written, sum of entries)."""
    async with platform.engine("loyalty").connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT m.points, count(*) FILTER (WHERE l.kind = 'redeem'), min(l.balance_after), sum(l.points) "
                    "FROM members m JOIN ledger_entries l ON l.customer_id = m.customer_id "
                    "WHERE m.customer_id = :c GROUP BY m.points"
                ),
                {"c": customer_id},
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def quiet_app() -> FastAPI:
    return loyalty.main.create_app(LoyaltySettings(consumers_enabled=False))


async def test_a_thousand_concurrent_redemptions_never_overspend(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    customer_id = await member_with(platform, 500)
    async with running_app(quiet_app()) as client:

        async def redeem() -> httpx.Response:
            headers = api_headers | {"Idempotency-Key": uuid.uuid4().hex}
            body = {"points": 10, "reason": "coffee"}
            return await client.post(f"/v1/members/{customer_id}/redemptions", json=body, headers=headers)

        answers = await asyncio.gather(*(redeem() for _ in range(1000)))
    codes = [answer.status_code for answer in answers]
    assert (codes.count(201), codes.count(409)) == (50, 950)
    assert await ledger(platform, customer_id) == (0, 50, 0, 0)


async def test_the_same_idempotency_key_sent_a_hundred_times_at_once_redeems_once(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    customer_id = await member_with(platform, 500)
    headers = api_headers | {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    body = {"points": 30, "reason": "cinema"}
    async with running_app(quiet_app()) as client:
        answers = await asyncio.gather(
            *(client.post(f"/v1/members/{customer_id}/redemptions", json=body, headers=headers) for _ in range(100))
        )
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.content for answer in answers}) == 1
    assert answers[0].json()["balance"] == 470
    assert await ledger(platform, customer_id) == (470, 1, 470, 470)
