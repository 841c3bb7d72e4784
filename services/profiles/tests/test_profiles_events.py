"""The fast paths (events.parse_purchase, parse_points) accept what the pydantic models accept, with the same result."""

from __future__ import annotations

import copy
import random
from datetime import UTC
from typing import Any

import pytest
from profiles.events import (
    Line,
    Points,
    PointsChanged,
    Purchase,
    PurchaseCompleted,
    _plain_purchase,
    parse_points,
    parse_purchase,
)
from pydantic import ValidationError

BASE: dict[str, Any] = {
    "event_id": "evt-1",
    "order_id": "ord-1",
    "customer_id": "cus-1",
    "occurred_at": "2026-12-01T10:00:00.123456+00:00",
    "currency": "USD",
    "channel": "web",
    "store_id": None,
    "items": [{"sku": "SKU-1", "name": None, "category": "cat-1", "quantity": 2, "unit_price": "12.50"}],
    "total": "25.00",
}

# Values tried for each field: valid ones of the plain shape, valid ones pydantic coerces, invalid ones.
TEXTS = ["", "x", "x" * 128, "x" * 129, "x" * 200, "x" * 201, None, 1, 1.5, True, ["x"], {"a": 1}, "ünï", "\u0663"]
TIMES = [
    "2026-12-01T10:00:00Z",
    "2026-12-01T10:00:00+02:00",
    "2026-12-01T10:00:00.5-05:30",
    "2026-12-01T10:00:00.1234567+00:00",
    "2026-12-01T10:00:00",
    "2026-12-01",
    "2026-12-01 10:00:00+00:00",
    "2026-13-01T10:00:00Z",
    "2026-12-01T24:00:00Z",
    "2026-12-01T10:00:60Z",
    "\u0662026-12-01T10:00:00Z",
    1764583200,
    None,
    "",
]
AMOUNTS = ["0", "25", "25.00", "-1.5", "1e3", "NaN", "inf", " 1", "1.", ".5", "\u0661", 25, 25.5, True, None, ""]
QUANTITIES = [1, 3, 0, -1, 1.0, "1", True, None]


def _through_pydantic(data: dict[str, Any]) -> Purchase:
    p = PurchaseCompleted.model_validate(data)
    lines = [Line(i.sku, i.name, i.category, i.quantity, i.unit_price) for i in p.items]
    return Purchase(p.order_id, p.customer_id, p.occurred_at, p.currency, p.channel, p.store_id, lines, p.total)


def _outcome(parse: Any, data: dict[str, Any]) -> Any:
    try:
        return parse(data)
    except ValidationError:
        return "invalid"


def _variants() -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = [copy.deepcopy(BASE)]
    fields: list[tuple[str, list[Any]]] = [
        ("order_id", TEXTS),
        ("customer_id", TEXTS),
        ("currency", [*TEXTS, "EUR", "EU", "EURO"]),
        ("channel", [*TEXTS, "x" * 32, "x" * 33]),
        ("store_id", TEXTS),
        ("occurred_at", TIMES),
        ("total", AMOUNTS),
        ("items", [[], None, "x", [None], [1]]),
    ]
    for field, values in fields:
        for value in values:
            data = copy.deepcopy(BASE)
            data[field] = value
            variants.append(data)
        data = copy.deepcopy(BASE)
        del data[field]
        variants.append(data)
    item_fields: list[tuple[str, list[Any]]] = [
        ("sku", TEXTS),
        ("name", TEXTS),
        ("category", TEXTS),
        ("quantity", QUANTITIES),
        ("unit_price", AMOUNTS),
    ]
    for field, values in item_fields:
        for value in values:
            data = copy.deepcopy(BASE)
            data["items"][0][field] = value
            variants.append(data)
        data = copy.deepcopy(BASE)
        del data["items"][0][field]
        variants.append(data)
    return variants


@pytest.mark.parametrize("data", _variants())
def test_the_fast_path_gives_what_pydantic_gives(data: dict[str, Any]) -> None:
    expected, got = _outcome(_through_pydantic, data), _outcome(parse_purchase, data)
    assert repr(got) == repr(expected)  # the same Decimal digits, the same time and zone
    if isinstance(got, Purchase):
        assert got.occurred_at.tzinfo is UTC


def test_random_mixtures_agree_and_the_plain_shape_takes_the_fast_path() -> None:
    rng = random.Random(5)
    pools: dict[str, list[Any]] = {
        "order_id": TEXTS,
        "customer_id": TEXTS,
        "occurred_at": TIMES,
        "total": AMOUNTS,
        "channel": TEXTS,
    }
    for _ in range(2000):
        data = copy.deepcopy(BASE)
        for field, pool in pools.items():
            if rng.random() < 0.3:
                data[field] = rng.choice(pool)
        if rng.random() < 0.3:
            data["items"][0]["unit_price"] = rng.choice(AMOUNTS)
        if rng.random() < 0.3:
            data["items"].append({"sku": "SKU-2", "quantity": rng.choice(QUANTITIES), "unit_price": "1.00"})
        assert repr(_outcome(parse_purchase, data)) == repr(_outcome(_through_pydantic, data))
    assert _plain_purchase(BASE) is not None  # what ingest sends does not go through pydantic


POINTS: dict[str, Any] = {
    "customer_id": "cus-1",
    "points": 25,
    "balance": 125,
    "cause_type": "purchase",
    "cause_id": "ord-1",
    "entry_id": 7,
    "occurred_at": "2026-12-01T10:00:00.123456+00:00",
}
NUMBERS = [0, -3, 2**40, 2**70, 1.0, 1.5, "7", True, None, "x"]


def _points_through_pydantic(data: dict[str, Any]) -> Points:
    p = PointsChanged.model_validate(data)
    return Points(p.customer_id, p.balance, p.entry_id, p.occurred_at)


def _points_variants() -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = [copy.deepcopy(POINTS)]
    fields: list[tuple[str, list[Any]]] = [
        ("customer_id", TEXTS),
        ("balance", NUMBERS),
        ("entry_id", NUMBERS),
        ("occurred_at", TIMES),
    ]
    for field, values in fields:
        for value in values:
            variants.append(POINTS | {field: value})
        variants.append({k: v for k, v in POINTS.items() if k != field})
    return variants


@pytest.mark.parametrize("data", _points_variants())
def test_the_points_fast_path_gives_what_pydantic_gives(data: dict[str, Any]) -> None:
    expected, got = _outcome(_points_through_pydantic, data), _outcome(parse_points, data)
    assert repr(got) == repr(expected)
