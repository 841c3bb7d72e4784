"""The consumer's fast paths give what the slow ones give: plain parsing, the merged scoring statement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError
from segments import service
from segments.config import SegmentsSettings
from segments.events import ProfileUpdated, PurchaseCompleted, parse_profile, parse_purchase
from segments.pg import positional
from segments.recompute import recompute_all
from segments.synthetic import generate_synthetic_customers
from sqlalchemy import text

from shared.db import transaction_connection
from shared.testing import TestPlatform, rollback_session

SETTINGS = SegmentsSettings(cluster_k=3)
NOW = datetime.now(UTC)

PURCHASE = {
    "event_id": "e-1",
    "order_id": "o-1",
    "customer_id": "c-1",
    "occurred_at": "2026-05-04T10:11:12.345678Z",
    "currency": "USD",
    "channel": "web",
    "store_id": None,
    "items": [{"sku": "SKU-1", "name": None, "category": "cat-1", "quantity": 1, "unit_price": "25.00"}],
    "total": "25.00",
}
PROFILE = {
    "customer_id": "c-1",
    "version": 3,
    "changed": ["orders"],
    "occurred_at": "2026-05-04T10:11:12.345678+02:00",
    "profile": {"orders": 1, "traits": {"country": "DE"}, "net_revenue": "25.00", "last_seen_at": None},
}


def _same(fast: Any, slow: Any) -> None:
    assert type(fast) is type(slow)
    assert fast.model_dump() == slow.model_dump()
    for name in ("occurred_at",):
        assert getattr(fast, name).utcoffset() == getattr(slow, name).utcoffset()


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"occurred_at": "2026-05-04T10:11:12+00:00"},
        {"total": "-3.5", "currency": "eur"},
        {"total": 25},  # a JSON number: pydantic decides
        {"total": "1e3"},
        {"occurred_at": "2026-05-04 10:11:12Z"},
        {"occurred_at": "2026-05-04T10:11:12.1234567Z"},
        {"extra": "ignored"},
    ],
)
def test_plain_purchases_parse_as_pydantic_does(change: dict[str, Any]) -> None:
    data = PURCHASE | change
    _same(parse_purchase(data), PurchaseCompleted.model_validate(data))


@pytest.mark.parametrize(
    "change",
    [{}, {"version": 1}, {"version": "4"}, {"profile": {}}, {"occurred_at": "2026-05-04T10:11:12Z"}],
)
def test_plain_profiles_parse_as_pydantic_does(change: dict[str, Any]) -> None:
    data = PROFILE | change
    _same(parse_profile(data), ProfileUpdated.model_validate(data))


@pytest.mark.parametrize(
    "change",
    [
        {"occurred_at": "2026-05-04T10:11:12"},  # no offset
        {"customer_id": ""},
        {"customer_id": "x" * 129},
        {"currency": "EURO"},
        {"total": "lots"},
        {"occurred_at": "2026-13-04T10:11:12Z"},
    ],
)
def test_invalid_purchases_fail_as_pydantic_does(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PurchaseCompleted.model_validate(PURCHASE | change)
    with pytest.raises(ValidationError):
        parse_purchase(PURCHASE | change)


@pytest.mark.parametrize(
    "change", [{"profile": None}, {"profile": []}, {"version": "v3"}, {"occurred_at": "2026-05-04T10:11:12"}]
)
def test_invalid_profiles_fail_as_pydantic_does(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ProfileUpdated.model_validate(PROFILE | change)
    with pytest.raises(ValidationError):
        parse_profile(PROFILE | change)


def test_named_parameters_become_numbered_once_each() -> None:
    sql, names = positional("SELECT CAST(:a AS int)::text, :b, :a, 'x: y', ':: no', c::int FROM t WHERE x = :b_2")
    assert sql == "SELECT CAST($1 AS int)::text, $2, $1, 'x: y', ':: no', c::int FROM t WHERE x = $3"
    assert names == ("a", "b", "b_2")


async def test_scored_attributes_are_what_the_view_shows(platform: TestPlatform) -> None:
    """The attributes rules read come from the scoring statement's RETURNING; they equal the view's rows."""
    async with rollback_session(platform.engine("segments")) as session:
        for table in ("customers", "customer_profiles", "orders", "refunds", "rfm_scores", "rfm_cut_points"):
            await session.execute(text(f"DELETE FROM {table}"))
        for table in ("predictions", "clv_models", "cluster_models", "segment_members", "outbox"):
            await session.execute(text(f"DELETE FROM {table}"))
        await generate_synthetic_customers(session, customers=300, as_of=NOW)
        await recompute_all(session, settings=SETTINGS, as_of=NOW)  # cut-points, a CLV model, clusters
        ids = ["syn-1", "syn-2", "syn-3", "nobody-yet"]
        await session.execute(text("INSERT INTO customers (customer_id) VALUES ('nobody-yet')"))
        await service.record_profile(
            session,
            update=ProfileUpdated(customer_id="syn-2", version=9, occurred_at=NOW, profile={"orders": 4, "x": [1.5]}),
            settings=SETTINGS,
        )
        purchase = PurchaseCompleted(
            order_id="hp-1", customer_id="syn-3", occurred_at=NOW - timedelta(days=1), currency="USD", total=Decimal(9)
        )
        await service.record_purchase(session, purchase=purchase, settings=SETTINGS)
        conn = await transaction_connection(session)
        context = service.BatchContext()
        facts = await service._facts_and_versions(conn, customer_ids=ids, as_of=NOW, context=context)
        cuts = await context.cut_points(session)
        model = await context.clv_model(session)
        assert cuts is not None and model is not None and set(facts) == {"syn-1", "syn-2", "syn-3"}
        scored = await service._score_and_read(
            conn, customer_ids=ids, facts=facts, cuts=cuts, model=model, settings=SETTINGS, as_of=NOW, at=NOW
        )
        viewed = await service.customers_attributes(session, customer_ids=ids)
        assert scored == viewed
        assert scored["syn-2"]["profile"] == {"orders": 4, "x": [1.5]}
        assert scored["syn-1"]["p_alive"] is not None and scored["nobody-yet"]["rfm_segment"] is None
        # Without a model the stored predictions stay, and the attributes show them.
        kept = await service._score_and_read(
            conn, customer_ids=ids, facts=facts, cuts=cuts, model=None, settings=SETTINGS, as_of=NOW, at=NOW
        )
        assert kept == await service.customers_attributes(session, customer_ids=ids) == viewed
