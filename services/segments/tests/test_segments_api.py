"""The segments HTTP API per the contract, with consumers off (data written through the service)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import segments.main
from segments import service
from segments.config import SegmentsSettings
from segments.events import ProfileUpdated, PurchaseCompleted
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import hash_api_key
from shared.testing import TestPlatform, running_app


def api_settings() -> SegmentsSettings:
    # Built after the platform fixture set SEGMENTS_DATABASE_URL.
    return SegmentsSettings(consumers_enabled=False, recompute_interval_seconds=0, cluster_k=3)


NOW = datetime.now(UTC)


@pytest.fixture
async def api(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(segments.main.create_app(api_settings())) as client:
        yield client


async def seed(platform: TestPlatform, prefix: str, count: int) -> list[str]:
    """Customers with purchases and profiles, committed (the API reads committed data)."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    async with platform.engine("segments").connect() as conn, conn.begin():
        session = AsyncSession(bind=conn)
        for i, customer_id in enumerate(ids):
            for n in range(1 + i % 3):
                await service.record_purchase(
                    session,
                    purchase=PurchaseCompleted(
                        order_id=f"{customer_id}-o{n}",
                        customer_id=customer_id,
                        occurred_at=NOW - timedelta(days=(i * 7 + n * 30) % 300),
                        currency="USD",
                        total=Decimal(10 + i * 3),
                    ),
                    settings=api_settings(),
                )
            country = "DE" if i % 2 else "FR"
            await service.record_profile(
                session,
                update=ProfileUpdated(
                    customer_id=customer_id,
                    version=1,
                    occurred_at=NOW,
                    profile={"loyalty_tier": "gold", "traits": {"country": country, "marketing_consent": True}},
                ),
                settings=api_settings(),
            )
        await session.close()
    return ids


async def test_rule_segment_lifecycle_over_http(
    platform: TestPlatform, api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    prefix = f"api-{uuid.uuid4().hex[:8]}"
    ids = await seed(platform, prefix, 8)
    germans = {
        "all": [
            {"field": "traits.country", "op": "eq", "value": "DE"},
            {"field": "profile.loyalty_tier", "op": "eq", "value": "gold"},
        ]
    }

    bad = await api.post(
        "/v1/segments",
        json={
            "key": f"{prefix}-bad",
            "name": "Bad",
            "rule": {"all": [{"field": "profile.colour", "op": "eq", "value": 1}]},
        },
        headers=api_headers,
    )
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["rule.all.0.field"]
    assert "unknown field 'profile.colour'" in bad.json()["errors"][0]["message"]

    preview = await api.post("/v1/segments/preview", json={"rule": germans, "sample_size": 3}, headers=api_headers)
    assert preview.status_code == 200, preview.text
    assert preview.json()["count"] >= 4 and len(preview.json()["sample"]) == 3

    created = await api.post(
        "/v1/segments", json={"key": f"{prefix}-de", "name": "German gold", "rule": germans}, headers=api_headers
    )
    assert created.status_code == 201, created.text
    segment = created.json()
    assert (segment["kind"], segment["status"]) == ("rule", "active") and segment["size"] >= 4
    again = await api.post(
        "/v1/segments", json={"key": f"{prefix}-de", "name": "Twice", "rule": germans}, headers=api_headers
    )
    assert again.status_code == 409

    ours = [c for c in ids if int(c.rsplit("-", 1)[1]) % 2]
    page = await api.get(f"/v1/segments/{segment['id']}/members", params={"limit": 2}, headers=api_headers)
    members = page.json()
    assert len(members["items"]) == 2 and members["next_after"] == members["items"][-1]["customer_id"]
    rest = await api.get(
        f"/v1/segments/{segment['id']}/members",
        params={"limit": 1000, "after": members["next_after"]},
        headers=api_headers,
    )
    everyone = [m["customer_id"] for m in members["items"] + rest.json()["items"]]
    assert set(ours) <= set(everyone) and len(everyone) == len(set(everyone))

    mine = await api.get(f"/v1/customers/{ours[0]}/segments", headers=api_headers)
    reasons = {s["segment_key"]: s["reason"] for s in mine.json()["segments"]}
    assert reasons[f"{prefix}-de"] == "matches traits.country = DE and profile.loyalty_tier = gold"

    patched = await api.patch(
        f"/v1/segments/{segment['id']}",
        json={"rule": {"field": "traits.country", "op": "eq", "value": "FR"}, "name": "French"},
        headers=api_headers,
    )
    assert patched.status_code == 200 and patched.json()["name"] == "French"
    history = await api.get(
        f"/v1/segments/{segment['id']}/history", params={"customer_id": ours[0]}, headers=api_headers
    )
    assert [h["change"] for h in history.json()["items"]] == ["exited", "entered"]
    customer_history = await api.get(f"/v1/customers/{ours[0]}/segments/history", headers=api_headers)
    assert any(h["segment_id"] == segment["id"] for h in customer_history.json()["items"])

    listed = await api.get("/v1/segments", params={"kind": "rule"}, headers=api_headers)
    assert segment["id"] in {s["id"] for s in listed.json()["items"]}
    assert (await api.delete(f"/v1/segments/{segment['id']}", headers=api_headers)).status_code == 204
    assert (await api.get(f"/v1/segments/{segment['id']}", headers=api_headers)).status_code == 404
    assert (await api.delete("/v1/segments/rfm-champions", headers=api_headers)).status_code == 409


async def test_rfm_predictions_and_sizes_after_a_recompute(
    platform: TestPlatform, api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    prefix = f"rfm-{uuid.uuid4().hex[:8]}"
    ids = await seed(platform, prefix, 30)
    assert (await api.get(f"/v1/customers/{prefix}-nobody/rfm", headers=api_headers)).status_code == 404
    run = await api.post("/v1/recomputes", json={}, headers=api_headers)
    assert run.status_code == 200, run.text
    assert run.json()["customers"] >= 30

    rfm = (await api.get(f"/v1/customers/{ids[-1]}/rfm", headers=api_headers)).json()
    assert {"recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "rfm_segment"} <= set(rfm)
    assert rfm["frequency"] == 3 and all(1 <= rfm[k] <= 5 for k in ("r_score", "f_score", "m_score"))
    assert isinstance(rfm["monetary"], str)
    # The same customer a year from now: nothing bought since, so recency grows by 365 days.
    later = (NOW + timedelta(days=365)).isoformat()
    future = (await api.get(f"/v1/customers/{ids[-1]}/rfm", params={"as_of": later}, headers=api_headers)).json()
    assert future["recency_days"] == rfm["recency_days"] + 365 and future["frequency"] == 3
    earlier = {"as_of": (NOW - timedelta(days=3000)).isoformat()}
    assert (await api.get(f"/v1/customers/{ids[-1]}/rfm", params=earlier, headers=api_headers)).status_code == 404

    predictions = await api.get(f"/v1/customers/{ids[-1]}/predictions", headers=api_headers)
    assert predictions.status_code == 200, predictions.text
    body = predictions.json()
    assert 0 <= body["p_alive"] <= 1 and body["expected_purchases_90d"] >= 0 and Decimal(body["clv_365d"]) >= 0

    segments_now = (await api.get(f"/v1/customers/{ids[-1]}/segments", headers=api_headers)).json()["segments"]
    assert {s["kind"] for s in segments_now} >= {"rfm", "cluster"}
    rfm_segment = next(s for s in segments_now if s["kind"] == "rfm")
    assert rfm_segment["segment_name"] == rfm["rfm_segment"]
    sizes = (await api.get(f"/v1/segments/{rfm_segment['segment_id']}/sizes", headers=api_headers)).json()
    assert sizes["size"] >= 1 and sizes["history"][-1]["size"] >= 1

    clusters = (await api.get("/v1/segments", params={"kind": "cluster"}, headers=api_headers)).json()["items"]
    assert clusters and all(c["name"].startswith("Cluster ") for c in clusters)


async def test_scopes_are_enforced(platform: TestPlatform, api: httpx.AsyncClient) -> None:
    reader = f"cx_reader_{uuid.uuid4().hex}"
    async with platform.engine("segments").begin() as conn:
        await conn.execute(
            text("INSERT INTO api_keys (key_id, key_hash, name, scopes) VALUES (:id, :hash, 'reader', :scopes)"),
            {"id": uuid.uuid4().hex[:12], "hash": hash_api_key(reader), "scopes": ["segments:read"]},
        )
    headers = {"Authorization": f"Bearer {reader}"}
    assert (await api.get("/v1/segments")).status_code == 401
    assert (await api.get("/v1/segments", headers=headers)).status_code == 200
    create = {"key": "nope", "name": "n", "rule": {"field": "rfm.r_score", "op": "exists"}}
    assert (await api.post("/v1/segments", json=create, headers=headers)).status_code == 403
    assert (await api.post("/v1/models/clv/fit", json={}, headers=headers)).status_code == 403
