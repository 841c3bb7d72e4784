"""Erasure across the whole platform: afterwards no service's database holds the customer.

All five services run as real processes (a worker and an API each, as `make up` runs them). A
customer browses anonymously, identifies with e-mail, phone, name and city, buys, is refunded,
gives feedback with free text, redeems points. Once every service holds data for them, profiles'
`DELETE /v1/customers/{id}` runs the erasure; after `customer.erased`, every text, JSON and array
column of every table of every service's database is searched for the customer id, the anonymous
id, the e-mail, the phone and the name: none may remain. The anonymous aggregates the services
document as kept (order totals and revenue, the loyalty ledger and balance, feedback scores) must
be unchanged, under the pseudonym that replaced the customer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from shared.settings import SERVICES
from shared.testing import TestPlatform, eventually, read_topic, service_process, worker_process
from shared.topics import PRIVACY_ERASURES

FAST = {"CX_RELAY_POLL_SECONDS": "0.2", "PROFILES_PUBLISH_INTERVAL_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def urls(platform: TestPlatform) -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        for service in SERVICES:  # workers first: an API's /readyz waits for its worker's consumer
            stack.enter_context(worker_process(service, env=FAST))
        yield {
            service: stack.enter_context(service_process(service, env=FAST | {"CX_API_ONLY": "true"}))
            for service in SERVICES
        }


class Person:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.customer_id = f"cus-forget-{tag}"
        self.anonymous_id = f"anon-forget-{tag}"
        self.email = f"ottilie.{tag}@example.com"
        self.phone = f"+44 7700 9{int(tag[:5], 16) % 100_000:05d}"
        self.name = f"Ottilie Vandermeer-{tag}"
        self.orders = [f"ord-{uuid.uuid4().hex}", f"ord-{uuid.uuid4().hex}"]
        self.feedback = [f"fb-{uuid.uuid4().hex}", f"fb-{uuid.uuid4().hex}"]

    @property
    def secrets(self) -> dict[str, str]:
        return {
            "customer id": self.customer_id,
            "anonymous id": self.anonymous_id,
            "e-mail": self.email,
            "phone": self.phone,
            "phone digits": self.phone.replace(" ", ""),
            "name": self.name,
        }


def _at(minutes_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    answer = await client.post(path, json=body, headers=headers)
    assert answer.status_code in (200, 201, 202), (path, answer.status_code, answer.text)
    found: dict[str, Any] = answer.json()
    return found


async def _scalar(platform: TestPlatform, service: str, sql: str, **params: Any) -> Any:
    async with platform.engine(service).connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def _rows(platform: TestPlatform, service: str, sql: str, **params: Any) -> list[Any]:
    async with platform.engine(service).connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def _holdings(platform: TestPlatform, person: Person, balance: int) -> dict[str, int]:
    cid = person.customer_id
    return {
        "ingest events": await _scalar(
            platform, "ingest", "select count(*) from ingested_events where customer_key = :c", c=cid
        ),
        "segments orders": await _scalar(
            platform, "segments", "select count(*) from orders where customer_id = :c", c=cid
        ),
        "feedback entries": await _scalar(
            platform, "feedback", "select count(*) from feedback_entries where customer_id = :c", c=cid
        ),
        "profiles profile": await _scalar(
            platform,
            "profiles",
            "select count(*) from customers where customer_id = :c and orders = 2 and refunds = 1"
            " and feedback_count = 2 and loyalty_points = :b and not dirty",
            c=cid,
            b=balance,
        ),
        "profiles traits": await _scalar(
            platform, "profiles", "select count(*) from customer_traits where customer_id = :c", c=cid
        ),
        "loyalty member": await _scalar(
            platform, "loyalty", "select count(*) from members where customer_id = :c and points = :b", c=cid, b=balance
        ),
    }


async def _wait_until_everywhere(platform: TestPlatform, person: Person, balance: int, timeout: float = 90) -> None:
    # identify, 2 purchases, a refund and an interaction under the customer's key (the first one: the visitor's)
    expected = {"ingest events": 5, "segments orders": 2, "feedback entries": 2, "profiles profile": 1,
                "profiles traits": 4, "loyalty member": 1}  # fmt: skip
    deadline = time.monotonic() + timeout
    while (found := await _holdings(platform, person, balance)) != expected:
        assert time.monotonic() < deadline, f"not held everywhere after {timeout}s: {found}"
        await asyncio.sleep(0.5)


async def _personal_data_left(platform: TestPlatform, person: Person, service: str) -> list[str]:
    """Every table.column of the service's database (text, json or array) still holding one of the secrets."""
    patterns = {what: f"%{value.lower()}%" for what, value in person.secrets.items()}
    columns = await _rows(
        platform,
        service,
        "select table_name, column_name from information_schema.columns c"
        " join information_schema.tables t using (table_schema, table_name)"
        " where c.table_schema = 'public' and t.table_type = 'BASE TABLE'"
        " and c.data_type in ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY')"
        " order by 1, 2",
    )
    found: list[str] = []
    for table, column in columns:
        for what, pattern in patterns.items():
            sql = f'select count(*) from "{table}" where lower("{column}"::text) like :p'
            if hits := await _scalar(platform, service, sql, p=pattern):
                found.append(f"{table}.{column}: {what} ({hits} rows)")
    return found


async def _totals(platform: TestPlatform, person: Person, owner: str | None) -> dict[str, Any]:
    """The anonymous aggregates each service keeps, found by the non-personal ids (order and feedback ids)."""
    orders, feedback = person.orders, person.feedback
    profiles_owner = owner or await _scalar(
        platform, "profiles", "select min(customer_id) from orders where order_id = any(:o)", o=orders
    )
    loyalty_owner = await _scalar(
        platform, "loyalty", "select min(customer_id) from ledger_entries where cause_id = any(:o)", o=orders
    )
    return {
        "profiles orders": await _rows(
            platform,
            "profiles",
            "select count(distinct customer_id), count(*), sum(total) from orders where order_id = any(:o)",
            o=orders,
        ),
        "profiles revenue": await _rows(
            platform,
            "profiles",
            "select currency, orders, gross, refunded, refunds from customer_revenue where customer_id = :c",
            c=profiles_owner,
        ),
        "profiles lines": await _scalar(
            platform,
            "profiles",
            "select sum(quantity * unit_price) from order_lines where order_id = any(:o)",
            o=orders,
        ),
        "loyalty ledger": await _rows(
            platform,
            "loyalty",
            "select count(*), sum(points) from ledger_entries where customer_id = :c",
            c=loyalty_owner,
        ),
        "loyalty balance": await _scalar(
            platform, "loyalty", "select points from members where customer_id = :c", c=loyalty_owner
        ),
        "ingest purchases": await _rows(
            platform,
            "ingest",
            "select count(*), sum((payload->>'total')::numeric) from ingested_events"
            " where kind = 'purchase' and order_id = any(:o)",
            o=orders,
        ),
        "feedback scores": await _rows(
            platform,
            "feedback",
            "select kind, score, sentiment_score is not null from feedback_entries"
            " where event_id = any(:f) order by kind",
            f=feedback,
        ),
    }


@dataclass
class Outcome:
    person: Person
    balance: int
    before: dict[str, Any]
    after: dict[str, Any]
    left: dict[str, list[str]]  # service -> table.column still naming the customer


@pytest.fixture(scope="module")
async def erasure(urls: dict[str, str], platform: TestPlatform, api_headers: dict[str, str]) -> Outcome:
    """The customer's life in every service, then the erasure; what is left, and the aggregates before/after."""
    person = Person()
    cid = person.customer_id
    clients = {s: httpx.AsyncClient(base_url=url, headers=api_headers, timeout=30) for s, url in urls.items()}
    try:
        ingest, loyalty, feedback = clients["ingest"], clients["loyalty"], clients["feedback"]
        await _post(ingest, "/v1/interactions", {
            "event_id": f"i-{uuid.uuid4().hex}", "anonymous_id": person.anonymous_id, "occurred_at": _at(60),
            "type": "search", "channel": "web", "properties": {"query": f"gifts for {person.name}", "category": "tea"},
        })  # fmt: skip
        await _post(ingest, "/v1/identify", {
            "event_id": f"id-{uuid.uuid4().hex}", "customer_id": cid, "anonymous_id": person.anonymous_id,
            "occurred_at": _at(50),
            "traits": {"email": person.email, "phone": person.phone, "name": person.name, "city": "Reykjavik"},
        })  # fmt: skip
        for order_id, minutes_ago, price in zip(person.orders, (40, 30), ("120.00", "30.00"), strict=True):
            await _post(ingest, "/v1/purchases", {
                "event_id": f"p-{uuid.uuid4().hex}", "order_id": order_id, "customer_id": cid,
                "occurred_at": _at(minutes_ago), "currency": "USD", "channel": "web",
                "items": [{"sku": "SKU-TEA", "name": "Tea", "category": "tea", "quantity": 1, "unit_price": price}],
                "total": price,
            })  # fmt: skip
        await _post(ingest, "/v1/refunds", {
            "event_id": f"r-{uuid.uuid4().hex}", "order_id": person.orders[1], "customer_id": cid,
            "occurred_at": _at(20), "currency": "USD", "amount": "10.00",
        })  # fmt: skip
        await _post(ingest, "/v1/interactions", {
            "event_id": f"i-{uuid.uuid4().hex}", "customer_id": cid, "occurred_at": _at(10), "type": "product_view",
            "channel": "app", "properties": {"sku": "SKU-TEA", "category": "tea", "text": f"mail {person.email}"},
        })  # fmt: skip
        await _post(feedback, "/v1/feedback", {
            "event_id": person.feedback[0], "customer_id": cid, "kind": "nps", "score": 9, "channel": "web",
        })  # fmt: skip
        await _post(feedback, "/v1/feedback", {
            "event_id": person.feedback[1], "customer_id": cid, "kind": "comment", "channel": "email",
            "text": f"I am {person.name}; the tea was lovely. Write to {person.email} or call {person.phone}.",
        })  # fmt: skip

        async def settled() -> bool:  # both purchases (120 + 30 points) in, the refund's 10 reversed
            member = await loyalty.get(f"/v1/members/{cid}")
            return member.status_code == 200 and member.json()["points"] == 140

        await eventually(settled, timeout=90)
        await eventually(lambda: _scalar(platform, "loyalty", "select 1 from ledger_entries where customer_id = :c"
                                         " and kind = 'reverse'", c=cid), timeout=90)  # fmt: skip
        balance = 140
        redemption = {"points": 40, "reason": f"voucher for {person.name}"}
        await _post(loyalty, f"/v1/members/{cid}/redemptions", redemption, **{"Idempotency-Key": uuid.uuid4().hex})
        balance -= 40
        await _wait_until_everywhere(platform, person, balance)
        for service in SERVICES:
            assert await _personal_data_left(platform, person, service), f"{service}: the scan must see the data"
        before = await _totals(platform, person, owner=cid)

        answer = await clients["profiles"].delete(f"/v1/customers/{cid}")
        assert answer.status_code == 202, answer.text
        request_id = answer.json()["request_id"]

        async def completed() -> bool:
            status = (await clients["profiles"].get(f"/v1/erasures/{request_id}")).json()
            return bool(status["status"] == "completed")

        assert await eventually(completed, timeout=90, interval=0.5)

        async def erased_published() -> list[Any]:
            return await read_topic(
                platform.bootstrap, PRIVACY_ERASURES, expect=1, timeout=5,
                matching=lambda r: orjson.loads(r.value)["type"] == "customer.erased"
                and orjson.loads(r.value)["data"]["request_id"] == request_id,
            )  # fmt: skip

        erased = await eventually(erased_published, timeout=60)
        assert sorted(orjson.loads(erased[0].value)["data"]["services"]) == sorted(SERVICES)
    finally:
        for client in clients.values():
            await client.aclose()

    announcement = orjson.loads(erased[0].value)["id"]

    async def everyone_heard_it() -> bool:  # on customer.erased each service forgets its outbox copies
        for service in SERVICES:
            sql = "select count(*) from processed_messages where consumer = :s and event_id = :e"
            if not await _scalar(platform, service, sql, s=service, e=announcement):
                return False
        return True

    await eventually(everyone_heard_it, timeout=60, interval=0.5)
    left = {service: await _personal_data_left(platform, person, service) for service in SERVICES}
    return Outcome(person, balance, before, await _totals(platform, person, owner=None), left)


@pytest.mark.parametrize(
    "service",
    SERVICES,
)
def test_no_personal_data_of_an_erased_customer_remains_in_the_database_of(erasure: Outcome, service: str) -> None:
    left = erasure.left[service]
    assert not left, f"{service} still names the erased customer:\n" + "\n".join(left)


def test_anonymous_aggregates_are_the_same_after_the_erasure(erasure: Outcome) -> None:
    before, after = erasure.before, erasure.after
    assert after == before
    assert after["profiles orders"][0][0] == 1  # one pseudonym for all their orders
    assert after["profiles orders"][0][1:] == (2, Decimal("150.0000"))
    assert after["profiles revenue"] == [("USD", 2, Decimal("150.0000"), Decimal("10.0000"), 1)]
    assert after["loyalty balance"] == erasure.balance == after["loyalty ledger"][0][1]
    assert after["ingest purchases"] == [(2, Decimal("150.00"))]
    assert [row[:2] for row in after["feedback scores"]] == [("comment", None), ("nps", 9)]
