"""The rule language: validation names the bad path; SQL and Python agree on who matches."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from segments import rules
from segments.service import customer_attributes
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.testing import TestPlatform, rollback_session

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def error_paths(raw: Any) -> list[str]:
    with pytest.raises(rules.RuleError) as caught:
        rules.parse_rule(raw)
    return [".".join(map(str, loc)) for loc, _, _ in caught.value.errors]


def test_unknown_field_is_refused_naming_its_path() -> None:
    rule = {
        "all": [
            {"field": "rfm.r_score", "op": "gte", "value": 4},
            {"field": "profile.shoe_size", "op": "eq", "value": 1},
        ]
    }
    assert error_paths(rule) == ["rule.all.1.field"]


def test_wrong_types_and_ops_are_refused_naming_their_paths() -> None:
    assert error_paths({"field": "rfm.r_score", "op": "gte", "value": "high"}) == ["rule.value"]
    assert error_paths({"field": "traits.city", "op": "gt", "value": "Berlin"}) == ["rule.op"]
    assert error_paths({"field": "traits.country", "op": "in", "value": []}) == ["rule.value"]
    assert error_paths({"field": "rfm.frequency", "op": "between", "value": [5, 1]}) == ["rule.value"]
    assert error_paths({"field": "profile.last_seen_at", "op": "within_last_days", "value": 2.5}) == ["rule.value"]
    assert error_paths({"field": "traits.signup_at", "op": "gt", "value": "yesterday"}) == ["rule.value"]
    assert error_paths({"any": [{"not": {"field": "rfm.r_score", "op": "gte"}}]}) == ["rule.any.0.not.value"]
    assert error_paths({"all": []}) == ["rule.all"]
    assert error_paths({"all": [{"field": "rfm.r_score", "op": "exists"}], "any": []}) == ["rule"]
    assert error_paths(["rfm.r_score"]) == ["rule"]


def test_every_error_is_reported_at_once() -> None:
    rule = {"any": [{"field": "nope", "op": "eq", "value": 1}, {"field": "rfm.m_score", "op": "like", "value": 1}]}
    assert error_paths(rule) == ["rule.any.0.field", "rule.any.1.op"]


def test_rules_too_large_are_refused() -> None:
    big = {"any": [{"field": "rfm.r_score", "op": "eq", "value": i} for i in range(300)]}
    with pytest.raises(rules.RuleError, match="more than 200 nodes"):
        rules.parse_rule(big)


def test_a_rule_reads_as_words() -> None:
    rule = rules.parse_rule(
        {
            "all": [
                {"field": "rfm.r_score", "op": "gte", "value": 4},
                {
                    "any": [
                        {"field": "traits.country", "op": "in", "value": ["DE", "FR"]},
                        {"not": {"field": "traits.city", "op": "exists"}},
                    ]
                },
            ]
        }
    )
    assert rules.describe(rule) == "rfm.r_score >= 4 and (traits.country in (DE, FR) or not traits.city exists)"


# --- SQL and Python agree ---------------------------------------------------------------------

COUNTRIES = ["DE", "FR", "US", "NL"]
STAGES = ["new", "active", "loyal", "churned"]


def random_profile(rng: random.Random) -> dict[str, Any]:
    """Profiles with missing, null, mistyped and differently written values, as real data has."""
    profile: dict[str, Any] = {}

    def maybe(key: str, *choices: Any) -> None:
        if rng.random() < 0.8:
            profile[key] = rng.choice(choices)

    when = (AS_OF - timedelta(days=rng.randint(0, 90), hours=rng.randint(0, 23))).isoformat()
    maybe("lifecycle_stage", *STAGES, None, 3)
    maybe("orders", rng.randint(0, 9), str(rng.randint(0, 9)), "many", None, 2.5)
    maybe("net_revenue", f"{rng.randint(0, 500)}.{rng.randint(0, 99):02d}", rng.random() * 300, "n/a")
    maybe("last_seen_at", when, when.replace("+00:00", "Z"), "2026-02-30T10:00:00Z", "2026-11-01", "last week", 5)
    maybe("top_categories", ["kitchen", "toys"], ["garden"], [], "kitchen", None)
    maybe("loyalty_tier", "bronze", "silver", "gold")
    maybe("interaction_counts", {"page_view": rng.randint(0, 50)}, {}, {"page_view": "x"})
    traits: dict[str, Any] = {}
    if rng.random() < 0.9:
        traits["country"] = rng.choice([*COUNTRIES, None, 49])
    if rng.random() < 0.7:
        traits["marketing_consent"] = rng.choice([True, False, "yes"])
    if rng.random() < 0.6:
        traits["birthday"] = rng.choice(["1990-05-17", "1985-12-01", "not a date"])
    if rng.random() < 0.5:
        traits["shoe_size"] = rng.choice([38, 42, 44.5, "42"])
    profile["traits"] = traits
    return profile


def random_condition(rng: random.Random) -> dict[str, Any]:
    options: list[dict[str, Any]] = [
        {"field": "rfm.r_score", "op": rng.choice(["eq", "ne", "gt", "gte", "lt", "lte"]), "value": rng.randint(1, 5)},
        {"field": "rfm.monetary", "op": "between", "value": sorted([rng.randint(0, 400), rng.randint(0, 400)])},
        {"field": "rfm.segment", "op": "in", "value": rng.sample(["Champions", "Lost", "At Risk", "New"], 2)},
        {"field": "predictions.p_alive", "op": rng.choice(["lt", "gte"]), "value": round(rng.random(), 3)},
        {"field": "profile.orders", "op": rng.choice(["gte", "eq"]), "value": rng.randint(0, 9)},
        {"field": "profile.orders", "op": "not_in", "value": [rng.randint(0, 9), rng.randint(0, 9)]},
        {"field": "profile.net_revenue", "op": "gt", "value": rng.choice([10, 99.5, 250])},
        {"field": "profile.lifecycle_stage", "op": rng.choice(["eq", "ne"]), "value": rng.choice(STAGES)},
        {"field": "profile.last_seen_at", "op": "within_last_days", "value": rng.randint(0, 60)},
        {
            "field": "profile.last_seen_at",
            "op": "gte",
            "value": (AS_OF - timedelta(days=rng.randint(0, 60))).isoformat(),
        },
        {"field": "profile.top_categories", "op": "contains", "value": rng.choice(["kitchen", "garden"])},
        {"field": "profile.interaction_counts.page_view", "op": "gt", "value": rng.randint(0, 50)},
        {"field": "traits.country", "op": rng.choice(["in", "not_in"]), "value": rng.sample(COUNTRIES, 2)},
        {"field": "traits.marketing_consent", "op": "eq", "value": rng.choice([True, False])},
        {"field": "traits.birthday", "op": "lt", "value": "1988-01-01"},
        {"field": "traits.shoe_size", "op": "gte", "value": 42},
        {"field": rng.choice(["traits.city", "traits.country", "profile.orders", "rfm.r_score"]), "op": "exists"},
    ]
    return rng.choice(options)


def random_rule(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    if depth >= 2 or rng.random() < 0.4:
        return random_condition(rng)
    kind = rng.choice(["all", "any", "not"])
    if kind == "not":
        return {"not": random_rule(rng, depth + 1)}
    return {kind: [random_rule(rng, depth + 1) for _ in range(rng.randint(1, 3))]}


async def seed_customers(session: AsyncSession, rng: random.Random, count: int) -> list[str]:
    for table in ("customers", "customer_profiles", "rfm_scores", "predictions"):
        await session.execute(text(f"DELETE FROM {table}"))
    ids = [f"rule-{i:03d}" for i in range(count)]
    for customer_id in ids:
        await session.execute(text("INSERT INTO customers (customer_id) VALUES (:id)"), {"id": customer_id})
        if rng.random() < 0.9:
            await session.execute(
                text("INSERT INTO customer_profiles VALUES (:id, 1, CAST(:p AS jsonb), :at, :at)"),
                {"id": customer_id, "p": orjson.dumps(random_profile(rng)).decode(), "at": AS_OF},
            )
        if rng.random() < 0.8:
            r, f, m = rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 5)
            await session.execute(
                text("INSERT INTO rfm_scores VALUES (:id, :at, :rd, :fr, :mo, :r, :f, :m, :seg)"),
                {
                    "id": customer_id,
                    "at": AS_OF,
                    "rd": rng.randint(0, 400),
                    "fr": rng.randint(1, 9),
                    "mo": Decimal(rng.randint(0, 40000)) / 100,
                    "r": r,
                    "f": f,
                    "m": m,
                    "seg": rng.choice(["Champions", "Lost", "At Risk", "New", "Loyal"]),
                },
            )
        if rng.random() < 0.7:
            await session.execute(
                text("INSERT INTO predictions VALUES (:id, :p, :e, :v, 1, :at)"),
                {
                    "id": customer_id,
                    "p": Decimal(rng.randint(0, 10**6)) / 10**6,
                    "e": Decimal(rng.randint(0, 10**6)) / 10**5,
                    "v": Decimal(rng.randint(0, 10**5)) / 100,
                    "at": AS_OF,
                },
            )
    return ids


async def test_sql_and_python_agree_on_who_matches(platform: TestPlatform) -> None:
    rng = random.Random(20261120)
    async with rollback_session(platform.engine("segments")) as session:
        ids = await seed_customers(session, rng, 160)
        attributes = {customer_id: await customer_attributes(session, customer_id=customer_id) for customer_id in ids}
        matched_somebody = 0
        for _ in range(120):
            raw = random_rule(rng)
            parsed = rules.parse_rule(raw)
            compiled = rules.to_sql(parsed)
            found = await session.execute(
                text(f"SELECT a.customer_id FROM customer_attributes a WHERE {compiled.sql}"),
                {**compiled.params, "as_of": AS_OF},
            )
            in_sql = set(found.scalars())
            in_python = {c for c, row in attributes.items() if rules.evaluate(parsed, row, as_of=AS_OF)}
            assert in_sql == in_python, raw
            matched_somebody += 0 < len(in_sql) < len(ids)
        assert matched_somebody > 40  # the rules were not all trivially empty or full


async def test_rfm_map_in_sql_equals_the_python_map(platform: TestPlatform) -> None:
    from segments import rfm

    async with rollback_session(platform.engine("segments")) as session:
        rows = await session.execute(
            text(
                f"SELECT r, f, m, {rfm.sql_segment_case('r', 'f', 'm')} AS name"
                " FROM generate_series(1, 5) r, generate_series(1, 5) f, generate_series(1, 5) m"
            )
        )
        assert {(r, f, m): name for r, f, m, name in rows} == {
            (r, f, m): rfm.rfm_segment(r, f, m).name for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)
        }


async def test_one_customer_scored_alone_gets_the_scores_of_the_full_computation(platform: TestPlatform) -> None:
    from segments.config import SegmentsSettings
    from segments.recompute import recompute_all
    from segments.service import refresh_customer
    from segments.synthetic import generate_synthetic_customers

    async with rollback_session(platform.engine("segments")) as session:
        for table in ("customers", "orders", "refunds", "rfm_scores", "rfm_cut_points", "customer_profiles"):
            await session.execute(text(f"DELETE FROM {table}"))
        await generate_synthetic_customers(session, customers=500, as_of=AS_OF, prefix="q")
        await recompute_all(session, settings=SegmentsSettings(cluster_k=3), as_of=AS_OF)
        query = text("SELECT customer_id, r_score, f_score, m_score, rfm_segment FROM rfm_scores ORDER BY 1")
        full = (await session.execute(query)).all()
        assert {row.r_score for row in full} == {1, 2, 3, 4, 5}
        for row in full[::10]:
            await refresh_customer(session, customer_id=row.customer_id, settings=SegmentsSettings(), as_of=AS_OF)
        alone = {row.customer_id: tuple(row) for row in await session.execute(query)}
        assert all(alone[row.customer_id] == tuple(row) for row in full[::10])
