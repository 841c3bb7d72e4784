"""The loyalty HTTP API in-process (consumers off) against the real database."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import loyalty.main
import pytest
from loyalty import api, rules, service
from loyalty.config import LoyaltySettings
from loyalty.events import PurchaseCompleted
from loyalty.models import EarningRulesRow
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.apikeys import issue_api_key
from shared.auth import issue_customer_token
from shared.testing import TEST_JWT_SECRET, TestPlatform, rollback_session, running_app

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
async def client(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    # Other suites (the OpenAPI fuzzer) may have stored any rules: these tests expect the defaults.
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        await rules.reset_program(session)
    async with running_app(loyalty.main.create_app(LoyaltySettings(consumers_enabled=False))) as client:
        yield client


async def member(platform: TestPlatform, *purchases: tuple[str, datetime]) -> str:
    """A committed member who bought (total, when) for each purchase."""
    customer_id = f"cus-{uuid.uuid4().hex[:12]}"
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        await service.enroll(session, customer_id=customer_id)
        for total, at in purchases:
            purchase = PurchaseCompleted(
                order_id=f"ord-{uuid.uuid4().hex[:8]}",
                customer_id=customer_id,
                currency="USD",
                total=total,
                occurred_at=at,
            )
            await service.credit_purchase(session, purchase=purchase, program=None)
    return customer_id


def token_for(customer_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_customer_token(customer_id, TEST_JWT_SECRET)}"}


async def key_with(platform: TestPlatform, *scopes: str) -> dict[str, str]:
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        _, key = await issue_api_key(session, name="test", scopes=list(scopes), source="test")
    return {"Authorization": f"Bearer {key}"}


def keyed(headers: dict[str, str], key: str | None = None) -> dict[str, str]:
    return headers | {"Idempotency-Key": key or uuid.uuid4().hex}


async def test_member_answer_has_contract_fields_tier_progress_and_expiring_points(
    client: httpx.AsyncClient, platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    cid = await member(platform, ("300.00", NOW - timedelta(days=330)), ("40.00", NOW))
    answer = await client.get(f"/v1/members/{cid}", headers=api_headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {"customer_id", "points", "tier", "expiring", "updated_at"} <= body.keys()
    assert (body["points"], body["tier"], body["qualifying_points"]) == (340, "bronze", 340)
    assert (body["next_tier"], body["points_to_next_tier"]) == ("silver", 660)
    [expiring] = body["expiring"]  # only the old lot expires within the window
    assert expiring["points"] == 300
    assert datetime.fromisoformat(expiring["expires_at"]) == service.add_months(NOW - timedelta(days=330), 12)
    mine = await client.get("/v1/me", headers=token_for(cid))
    assert mine.json() == body


async def test_unknown_member_is_not_found(client: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    assert (await client.get("/v1/members/nobody-here", headers=api_headers)).status_code == 404
    assert (await client.get("/v1/me", headers=token_for("nobody-here"))).status_code == 404
    assert (await client.get("/v1/me/transactions", headers=token_for("nobody-here"))).status_code == 404


async def test_a_member_token_never_reaches_another_member(client: httpx.AsyncClient, platform: TestPlatform) -> None:
    mine, theirs = await member(platform, ("10.00", NOW)), await member(platform, ("90.00", NOW))
    headers = keyed(token_for(mine))
    attempts = [
        client.get(f"/v1/members/{theirs}", headers=headers),
        client.get(f"/v1/members/{theirs}/transactions", headers=headers),
        client.post(f"/v1/members/{theirs}/redemptions", json={"points": 5, "reason": "x"}, headers=headers),
        client.post(f"/v1/members/{theirs}/adjustments", json={"points": 5, "reason": "x"}, headers=headers),
    ]
    for attempt in attempts:
        assert (await attempt).status_code == 401
    # /v1/me ignores any customer id smuggled into the query or body.
    me = await client.get("/v1/me", params={"customer_id": theirs}, headers=headers)
    assert me.json()["customer_id"] == mine
    spent = await client.post(
        "/v1/me/redemptions", json={"points": 5, "reason": "x", "customer_id": theirs}, headers=headers
    )
    assert spent.status_code == 422
    assert (await client.get(f"/v1/members/{theirs}", headers=token_for(theirs))).status_code == 401


async def test_transactions_are_paged_newest_first(
    client: httpx.AsyncClient, platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    cid = await member(platform, *[(f"{n}0.00", NOW - timedelta(days=n)) for n in range(1, 6)])
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(3):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"/v1/members/{cid}/transactions", params=params, headers=api_headers)).json()
        seen += [item["entry_id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert cursor is None and len(seen) == 5 and seen == sorted(seen, reverse=True)
    mine = (await client.get("/v1/me/transactions", headers=token_for(cid))).json()
    assert [item["entry_id"] for item in mine["items"]] == seen
    assert mine["items"][0]["kind"] == "earn" and mine["items"][0]["balance_after"] == 150
    bad = await client.get(f"/v1/members/{cid}/transactions", params={"cursor": "abc"}, headers=api_headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"


async def test_redemption_replays_its_first_answer_for_the_same_key(
    client: httpx.AsyncClient, platform: TestPlatform
) -> None:
    cid = await member(platform, ("100.00", NOW))
    headers = keyed(token_for(cid))
    first = await client.post("/v1/me/redemptions", json={"points": 40, "reason": "voucher"}, headers=headers)
    again = await client.post("/v1/me/redemptions", json={"points": 40, "reason": "voucher"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.content == again.content and again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["balance"] == 60 and first.json()["redemption_id"].startswith("rdm_")
    other = await client.post("/v1/me/redemptions", json={"points": 41, "reason": "voucher"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert (await client.get("/v1/me", headers=headers)).json()["points"] == 60


async def test_redemption_beyond_the_balance_answers_409_and_changes_nothing(
    client: httpx.AsyncClient, platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    cid = await member(platform, ("25.00", NOW))
    answer = await client.post(
        f"/v1/members/{cid}/redemptions", json={"points": 26, "reason": "too much"}, headers=keyed(api_headers)
    )
    assert answer.status_code == 409
    page = (await client.get(f"/v1/members/{cid}/transactions", headers=api_headers)).json()
    assert [item["kind"] for item in page["items"]] == ["earn"]
    assert (await client.get(f"/v1/members/{cid}", headers=api_headers)).json()["points"] == 25


async def test_redemption_bodies_are_checked_and_never_set_balance_or_tier(
    client: httpx.AsyncClient, platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    cid = await member(platform, ("25.00", NOW))
    url = f"/v1/members/{cid}/redemptions"
    missing_key = await client.post(url, json={"points": 1, "reason": "x"}, headers=api_headers)
    assert missing_key.status_code == 422
    assert missing_key.json()["errors"][0]["field"] == "header.Idempotency-Key"
    smuggled = {"points": 1, "reason": "x", "tier": "platinum", "balance": 10**6}
    refused = await client.post(url, json=smuggled, headers=keyed(api_headers))
    assert refused.status_code == 422
    assert {e["field"] for e in refused.json()["errors"]} == {"tier", "balance"}
    bad = await client.post(url, json={"points": 0, "reason": ""}, headers=keyed(api_headers))
    assert {e["field"] for e in bad.json()["errors"]} == {"points", "reason"}
    assert (await client.get(f"/v1/members/{cid}", headers=api_headers)).json()["tier"] == "bronze"


async def test_adjustments_need_the_admin_scope(client: httpx.AsyncClient, platform: TestPlatform) -> None:
    cid = await member(platform, ("10.00", NOW))
    writer, admin = await key_with(platform, "loyalty:write"), await key_with(platform, "admin")
    url = f"/v1/members/{cid}/adjustments"
    assert (await client.post(url, json={"points": 5, "reason": "x"}, headers=writer)).status_code == 403
    credited = await client.post(url, json={"points": 15, "reason": "goodwill"}, headers=admin)
    assert credited.status_code == 201 and credited.json()["balance"] == 25
    assert (await client.post(url, json={"points": -26, "reason": "x"}, headers=admin)).status_code == 409
    debited = await client.post(url, json={"points": -5, "reason": "correction"}, headers=admin)
    assert debited.json()["balance"] == 20
    assert (await client.post(url, json={"points": 0, "reason": "x"}, headers=admin)).status_code == 422
    assert (await client.post(url, json={"points": 5, "reason": "x", "tier": "gold"}, headers=admin)).status_code == 422
    unknown = await client.post("/v1/members/nobody-here/adjustments", json={"points": 5, "reason": "x"}, headers=admin)
    assert unknown.status_code == 404
    writer_redeems = await client.post(
        f"/v1/members/{cid}/redemptions", json={"points": 1, "reason": "x"}, headers=keyed(writer)
    )
    assert writer_redeems.status_code == 201


async def test_rules_are_read_and_replaced_by_admins(
    client: httpx.AsyncClient, platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    reader = await key_with(platform, "loyalty:read")
    assert (await client.get("/v1/rules", headers=reader)).status_code == 403
    current = (await client.get("/v1/rules", headers=api_headers)).json()
    assert current["base_rates"] == {"default": "1"} and current["tiers"][0]["name"] == "bronze"
    document = {k: v for k, v in current.items() if k != "version"}
    broken = document | {"tiers": [{"name": "bronze", "threshold": 10}], "points": 5}
    refused = await client.put("/v1/rules", json=broken, headers=api_headers)
    assert refused.status_code == 422
    assert {e["field"] for e in refused.json()["errors"]} == {"tiers", "points"}
    changed = document | {"feedback_points": 99}
    try:
        stored = await client.put("/v1/rules", json=changed, headers=api_headers)
        assert stored.status_code == 200 and stored.json()["version"] == current["version"] + 1
        assert (await client.get("/v1/rules", headers=api_headers)).json()["feedback_points"] == 99
    finally:
        restored = rules.EarningRules().model_dump(mode="json")
        assert (await client.put("/v1/rules", json=restored, headers=api_headers)).status_code == 200


async def test_campaigns_are_created_read_replaced_and_deleted(
    client: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    body: dict[str, Any] = {
        "name": "Double points",
        "starts_at": "2030-01-01T00:00:00Z",
        "ends_at": "2030-01-08T00:00:00Z",
        "multiplier": "2",
        "segment_key": f"seg-{uuid.uuid4().hex[:6]}",
    }
    created = await client.post("/v1/campaigns", json=body, headers=api_headers)
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    url = f"/v1/campaigns/{campaign_id}"
    assert (await client.get(url, headers=api_headers)).json()["name"] == "Double points"
    assert campaign_id in [c["id"] for c in (await client.get("/v1/campaigns", headers=api_headers)).json()]
    replaced = await client.put(url, json=body | {"multiplier": "3"}, headers=api_headers)
    assert replaced.json()["multiplier"] == "3.0000"
    backwards = await client.post("/v1/campaigns", json=body | {"ends_at": "2029-01-01T00:00:00Z"}, headers=api_headers)
    assert backwards.status_code == 422
    assert (await client.delete(url, headers=api_headers)).status_code == 204
    assert (await client.get(url, headers=api_headers)).status_code == 404


async def test_rules_file_is_stored_when_the_database_has_none(platform: TestPlatform, tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    document = {
        "base_rates": {"default": "1", "EUR": "1.5"},
        "segment_bonuses": {"win_back": 300},
        "campaigns": [
            {"name": "Launch", "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-02-01T00:00:00Z", "multiplier": 2}
        ],
    }
    path.write_text(json.dumps(document))
    program = rules.read_program_file(str(path))
    assert program is not None
    async with rollback_session(platform.engine("loyalty")) as session:
        await session.execute(delete(EarningRulesRow))
        assert await rules.current_rules(session, fallback=program.rules()) == (program.rules(), 0)
        assert await rules.seed_rules(session, program=program) is True
        stored, version = await rules.current_rules(session)
        assert (stored.segment_bonuses, version) == ({"win_back": 300}, 1)
        assert "Launch" in [c.name for c in await rules.list_campaigns(session)]
        assert await rules.seed_rules(session, program=program) is False


async def test_member_reads_are_answered_by_the_lean_routes_with_the_endpoints_errors(
    client: httpx.AsyncClient, platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    lean = {r.path: r for r in api.router.routes if isinstance(r, api._MemberRoute)}
    assert lean.keys() == {"/v1/members/{customer_id}"}  # /v1/me's answers: MyMemberFastPath, then the endpoint
    missing = await client.get("/v1/me")
    assert (missing.status_code, missing.json()) == (401, {"detail": "missing bearer credentials"})
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = await client.get("/v1/me", headers={"Authorization": "Bearer not-a-token"})
    assert (forged.status_code, forged.json()) == (401, {"detail": "invalid customer token"})
    unknown = await client.get("/v1/me", headers=token_for("x" * 129))  # a sub no member can have
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "member not found"})
    lacking = await client.get("/v1/members/anyone", headers=await key_with(platform, "loyalty:write"))
    assert (lacking.status_code, lacking.json()) == (403, {"detail": "API key lacks scope loyalty:read"})
    assert (await client.get(f"/v1/members/{'x' * 129}")).status_code == 401  # the key first, as before
    too_long = await client.get(f"/v1/members/{'x' * 129}", headers=api_headers)
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"] == "path.customer_id"
    not_allowed = await client.delete("/v1/me", headers=token_for("x"))
    assert (not_allowed.status_code, not_allowed.headers["allow"]) == (405, "GET")


async def test_my_member_is_answered_before_the_routing_with_the_routes_bytes(
    client: httpx.AsyncClient, platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    cid = await member(platform, ("120.00", NOW))
    app = loyalty.main.create_app(LoyaltySettings(consumers_enabled=False))
    assert next(getattr(m.cls, "__name__", "") for m in app.user_middleware) == "MyMemberFastPath"  # outermost
    staff = await client.get(f"/v1/members/{cid}", headers=api_headers)  # through the route
    mine = await client.get("/v1/me", headers=token_for(cid))
    assert (mine.status_code, mine.headers["content-type"]) == (200, "application/json")
    assert mine.content == staff.content
    assert int(mine.headers["content-length"]) == len(mine.content)
