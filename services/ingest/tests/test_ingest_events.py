"""Ingest's event endpoints over HTTP: acceptance, duplicates, validation, refunds, batches."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from ingest.config import IngestSettings
from ingest.main import create_app
from sqlalchemy import text

from shared.db import PgDep
from shared.testing import TestPlatform, running_app


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def now() -> str:
    return datetime.now(UTC).isoformat()


def purchase(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": uid("evt"),
        "order_id": uid("ord"),
        "customer_id": uid("cus"),
        "occurred_at": now(),
        "currency": "USD",
        "items": [
            {"sku": "MUG-01", "name": "Mug", "category": "kitchen", "quantity": 2, "unit_price": "19.90"},
            {"sku": "TEA-05", "quantity": 1, "unit_price": 12},
        ],
        "total": "51.80",
    }
    return body | overrides


def refund(order: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": uid("ref"),
        "order_id": order["order_id"],
        "customer_id": order["customer_id"],
        "occurred_at": now(),
        "currency": order["currency"],
    }
    return body | overrides


def interaction(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": uid("int"),
        "customer_id": uid("cus"),
        "occurred_at": now(),
        "type": "product_view",
        "channel": "app",
        "properties": {"sku": "MUG-01", "category": "kitchen"},
    }
    return body | overrides


def identify(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": uid("idn"),
        "customer_id": uid("cus"),
        "anonymous_id": uid("anon"),
        "occurred_at": now(),
        "traits": {"email": "ada@example.com", "phone": "+44 20 7946 0958", "city": "London", "shoe_size": 38},
    }
    return body | overrides


async def published(platform: TestPlatform, envelope_id: str) -> dict[str, Any]:
    """The envelope queued in ingest's outbox for this event."""
    async with platform.engine("ingest").connect() as conn:
        row = (
            await conn.execute(text("select topic, key, payload from outbox where event_id = :id"), {"id": envelope_id})
        ).one()
    return {"topic": row.topic, "key": row.key, **orjson.loads(row.payload)}


def fields(answer: httpx.Response) -> set[str]:
    return {error["field"] for error in answer.json()["errors"]}


async def test_purchase_is_accepted_once_and_a_repeat_names_the_original(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    body = purchase()
    first = await api.post("/v1/purchases", json=body, headers=api_headers)
    second = await api.post("/v1/purchases", json=body | {"total": "1.00"}, headers=api_headers)
    assert (first.status_code, second.status_code) == (202, 200), first.text
    assert second.json() == {"status": "duplicate", "event_id": body["event_id"], "id": first.json()["id"]}
    event = await published(platform, first.json()["id"])
    assert (event["topic"], event["key"], event["type"]) == (
        "ingest.purchases.v1",
        body["customer_id"],
        "purchase.completed",
    )
    assert event["data"]["items"][1]["unit_price"] == "12.00"
    assert event["data"]["total"] == "51.80"


async def test_same_event_posted_20_times_at_once_is_accepted_once(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    body = purchase()
    answers = await asyncio.gather(*(api.post("/v1/purchases", json=body, headers=api_headers) for _ in range(20)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 19 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    async with platform.engine("ingest").connect() as conn:
        stored = await conn.scalar(
            text("select count(*) from ingested_events where event_id = :e"), {"e": body["event_id"]}
        )
    assert stored == 1


async def test_concurrent_purchases_are_each_stored_and_answered_their_own_id(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    bodies = [purchase() for _ in range(30)]  # stored a few statements at a time (GroupedWriter)
    answers = await asyncio.gather(*(api.post("/v1/purchases", json=body, headers=api_headers) for body in bodies))
    assert {a.status_code for a in answers} == {202}
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.json()["event_id"] == body["event_id"]
        event = await published(platform, answer.json()["id"])
        assert (event["key"], event["data"]["event_id"]) == (body["customer_id"], body["event_id"])


async def test_field_and_cross_field_errors_are_reported_together(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    body = purchase(
        currency="JPY",
        channel="Web Shop!",
        items=[
            {"sku": "A", "quantity": "two", "unit_price": "19.90"},
            {"sku": "B", "quantity": 1, "unit_price": "5.5"},
        ],
        total="50",
        occurred_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    )
    answer = await api.post("/v1/purchases", json=body, headers=api_headers)
    assert answer.status_code == 422
    assert fields(answer) == {"channel", "items.0.quantity", "occurred_at", "items.0.unit_price", "items.1.unit_price"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "usd"}, "currency"),
        ({"occurred_at": "2026-11-20T10:15:00"}, "occurred_at"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"customer_id": "bad id with spaces"}, "customer_id"),
        ({"items": []}, "items"),
        ({"total": "51.00"}, "total"),
        ({"total": "1e400"}, "total"),
        ({"items": [{"sku": "A", "quantity": 0, "unit_price": "1.00"}], "total": None}, "items.0.quantity"),
        ({"items": [{"sku": "A", "quantity": 1, "unit_price": "-1.00"}], "total": None}, "items.0.unit_price"),
        ({"items": [{"sku": "A", "quantity": 1, "unit_price": "1.001"}], "total": None}, "items.0.unit_price"),
        ({"items": [{"sku": "A", "quantity": 1, "unit_price": True}], "total": None}, "items.0.unit_price"),
    ],
)
async def test_bad_purchase_field_is_named(
    api: httpx.AsyncClient, api_headers: dict[str, str], change: dict[str, Any], field: str
) -> None:
    answer = await api.post("/v1/purchases", json=purchase(**change), headers=api_headers)
    assert answer.status_code == 422, answer.text
    assert field in fields(answer)


async def test_money_follows_the_currency_minor_unit(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    kwd = purchase(currency="KWD", items=[{"sku": "A", "quantity": 1, "unit_price": "1.125"}], total="1.125")
    jpy = purchase(currency="JPY", items=[{"sku": "A", "quantity": 3, "unit_price": 1200}], total=None)
    assert (await api.post("/v1/purchases", json=kwd, headers=api_headers)).status_code == 202
    assert (await api.post("/v1/purchases", json=jpy, headers=api_headers)).status_code == 202


async def test_refund_of_items_is_priced_from_the_stored_order(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    order = purchase()
    assert (await api.post("/v1/purchases", json=order, headers=api_headers)).status_code == 202
    body = refund(order, items=[{"sku": "MUG-01", "quantity": 1}])
    answer = await api.post("/v1/refunds", json=body, headers=api_headers)
    assert answer.status_code == 202, answer.text
    data = (await published(platform, answer.json()["id"]))["data"]
    assert data["amount"] == "19.90"
    assert data["refund_id"] == body["event_id"]
    assert data["items"] == [{"sku": "MUG-01", "quantity": 1, "unit_price": "19.90", "category": "kitchen"}]
    again = await api.post("/v1/refunds", json=body, headers=api_headers)
    assert (again.status_code, again.json()["id"]) == (200, answer.json()["id"])


async def test_refunds_beyond_the_order_are_refused(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    order = purchase()
    await api.post("/v1/purchases", json=order, headers=api_headers)
    too_many = refund(order, items=[{"sku": "MUG-01", "quantity": 3}])
    unknown_sku = refund(order, items=[{"sku": "NOPE", "quantity": 1}])
    too_much = refund(order, amount="60.00")
    wrong_currency = refund(order, currency="EUR", amount="1.00")
    for body, field in [
        (too_many, "items.0.quantity"),
        (unknown_sku, "items.0.sku"),
        (too_much, "amount"),
        (wrong_currency, "currency"),
    ]:
        answer = await api.post("/v1/refunds", json=body, headers=api_headers)
        assert answer.status_code == 422, body
        assert field in fields(answer)
    first = await api.post("/v1/refunds", json=refund(order, amount="50.00"), headers=api_headers)
    rest = await api.post("/v1/refunds", json=refund(order, amount="1.81"), headers=api_headers)
    assert (first.status_code, rest.status_code) == (202, 422)


async def test_refund_of_an_unknown_order_needs_prices(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    order = purchase()  # never sent
    unpriced = await api.post(
        "/v1/refunds", json=refund(order, items=[{"sku": "A", "quantity": 1}]), headers=api_headers
    )
    assert unpriced.status_code == 422
    assert fields(unpriced) == {"items.0.unit_price"}
    priced = refund(order, items=[{"sku": "A", "quantity": 2, "unit_price": "3.50"}])
    answer = await api.post("/v1/refunds", json=priced, headers=api_headers)
    assert answer.status_code == 202
    assert (await published(platform, answer.json()["id"]))["data"]["amount"] == "7.00"
    neither = await api.post("/v1/refunds", json=refund(order), headers=api_headers)
    assert "items" in fields(neither)


async def test_interactions_are_keyed_by_customer_else_anonymous_id(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    anonymous = interaction(customer_id=None, anonymous_id=uid("anon"), type="search", properties={"query": "mugs"})
    answer = await api.post("/v1/interactions", json=anonymous, headers=api_headers)
    assert answer.status_code == 202, answer.text
    event = await published(platform, answer.json()["id"])
    assert (event["topic"], event["key"]) == ("ingest.interactions.v1", anonymous["anonymous_id"])
    assert event["data"]["properties"] == {"query": "mugs"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_id": None}, "customer_id"),
        ({"type": "teleport"}, "type"),
        ({"properties": {"text": "x" * 20_000}}, "properties"),
        ({"properties": {f"k{i}": i for i in range(101)}}, "properties"),
        ({"properties": ["not", "an", "object"]}, "properties"),
    ],
)
async def test_bad_interaction_field_is_named(
    api: httpx.AsyncClient, api_headers: dict[str, str], change: dict[str, Any], field: str
) -> None:
    answer = await api.post("/v1/interactions", json=interaction(**change), headers=api_headers)
    assert answer.status_code == 422
    assert field in fields(answer)


async def test_identify_keeps_custom_traits_and_checks_contact_formats(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    body = identify()
    answer = await api.post("/v1/identify", json=body, headers=api_headers)
    assert answer.status_code == 202, answer.text
    event = await published(platform, answer.json()["id"])
    assert event["topic"] == "ingest.identities.v1"
    assert event["data"]["traits"] == body["traits"]
    bad = identify(traits={"email": "not-an-email", "phone": "call me", "birthday": "2999-01-01", "country": "gb"})
    refused = await api.post("/v1/identify", json=bad, headers=api_headers)
    assert refused.status_code == 422
    assert fields(refused) == {"traits.email", "traits.phone", "traits.birthday", "traits.country"}


async def test_batch_reports_each_event_and_keeps_the_good_ones(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    order = purchase()
    repeated = interaction()
    await api.post("/v1/interactions", json=repeated, headers=api_headers)
    events = [
        {"kind": "purchase", **order},
        {"kind": "refund", **refund(order, items=[{"sku": "TEA-05", "quantity": 1}])},
        {"kind": "interaction", **repeated},
        {"kind": "identify", **identify()},
        {"kind": "purchase", **purchase(currency="XYZ")},
        {"kind": "teleport", "event_id": "e-1"},
        "not an object",
        {"kind": "refund", **refund(order, items=[{"sku": "TEA-05", "quantity": 1}])},  # the tea is refunded already
    ]
    answer = await api.post("/v1/batch", json={"events": events}, headers=api_headers)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["accepted"], result["duplicates"]) == (3, 1), result
    rejected = {r["index"]: r for r in result["rejected"]}
    assert set(rejected) == {4, 5, 6, 7}
    assert rejected[4]["event_id"] == events[4]["event_id"]  # type: ignore[index]
    assert rejected[5]["errors"][0]["field"] == "kind"
    assert rejected[7]["errors"][0]["field"] == "items.0.quantity"


async def test_same_event_twice_in_one_batch_is_accepted_once(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    body = {"kind": "purchase", **purchase()}
    answer = await api.post("/v1/batch", json={"events": [body, body]}, headers=api_headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    again = await api.post("/v1/purchases", json=body, headers=api_headers)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    async with platform.engine("ingest").connect() as conn:
        stored = await conn.scalar(text("select count(*) from outbox where event_id = :id"), {"id": again.json()["id"]})
    assert stored == 1


async def test_batch_over_the_limits_is_refused_with_413(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    many = {"events": [{"kind": "interaction"}] * 1001}
    assert (await api.post("/v1/batch", json=many, headers=api_headers)).status_code == 413
    big = {"events": [{"kind": "interaction", "pad": "x" * 1_100_000}]}
    assert (await api.post("/v1/batch", json=big, headers=api_headers)).status_code == 413
    assert (await api.post("/v1/batch", json={"events": "no"}, headers=api_headers)).status_code == 422


def random_json(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.randint(-(10**20), 10**20),
        lambda: rng.uniform(-1e308, 1e308),
        lambda: rng.choice(["", "USD", "2026-11-20T10:15:00Z", "1e999999", "NaN", "\u0000", "é" * 200, "-1"]),
    ]
    if depth < 3:
        choices += [
            lambda: [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            lambda: {rng.choice(FUZZ_KEYS): random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))},
        ]
    return rng.choice(choices)()


FUZZ_KEYS = [
    "event_id", "order_id", "customer_id", "anonymous_id", "occurred_at", "currency", "items", "sku", "quantity",
    "unit_price", "total", "amount", "type", "properties", "traits", "email", "phone", "birthday", "kind", "events",
]  # fmt: skip


def mutated(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    changed = dict(body)
    for key in rng.sample(sorted(changed), k=rng.randint(1, 3)):
        changed[key] = random_json(rng)
    return changed


async def test_no_input_makes_a_500(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    rng = random.Random(20261123)
    endpoints: dict[str, Callable[[], dict[str, Any]]] = {
        "/v1/purchases": purchase,
        "/v1/refunds": lambda: refund(purchase(), amount="1.00"),
        "/v1/interactions": interaction,
        "/v1/identify": identify,
    }
    statuses: set[int] = set()
    for _ in range(60):
        for path, make in endpoints.items():
            body: Any = mutated(rng, make()) if rng.random() < 0.7 else random_json(rng)
            answer = await api.post(path, content=json.dumps(body), headers=api_headers)
            statuses.add(answer.status_code)
            batch = {"events": [{"kind": path.split("/")[-1].rstrip("s"), **mutated(rng, make())}, random_json(rng)]}
            statuses.add((await api.post("/v1/batch", content=json.dumps(batch), headers=api_headers)).status_code)
    for raw in [b"", b"{", b"\xff\xfe", b"[" * 5000, b'{"events": [' + b"[" * 2000 + b"]}", b"null", b"1e999"]:
        for path in [*endpoints, "/v1/batch"]:
            statuses.add((await api.post(path, content=raw, headers=api_headers)).status_code)
    assert statuses <= {200, 202, 422}, statuses


async def test_lost_database_connection_answers_503_with_retry_after(api_headers: dict[str, str]) -> None:
    app = create_app(IngestSettings(consumers_enabled=False, relay_enabled=False))

    async def lost(connection: PgDep) -> None:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    app.add_api_route("/test/lost-connection", lost, methods=["POST"])
    async with running_app(app) as client:
        answer = await client.post("/test/lost-connection", headers=api_headers)
    assert (answer.status_code, answer.headers.get("retry-after")) == (503, "1")
