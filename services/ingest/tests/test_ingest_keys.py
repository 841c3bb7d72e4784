"""API keys: the admin endpoints and the command-line tool, scopes, rate limits, dedup per source."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from ingest.keys import cli
from sqlalchemy import text
from typer.testing import CliRunner

from shared.testing import TestPlatform


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def interaction(event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or f"evt-{uuid.uuid4().hex}",
        "customer_id": "cus-keys",
        "occurred_at": datetime.now(UTC).isoformat(),
        "type": "app_open",
    }


async def new_key(api: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    answer = await api.post(
        "/v1/admin/api-keys", json={"name": "test", "scopes": ["ingest:write"]} | body, headers=headers
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def test_key_is_shown_once_and_stored_hashed(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    created = await new_key(api, api_headers, name="storefront", source="shop-eu")
    assert created["key"].startswith(f"cx_{created['key_id']}_")
    assert created["source"] == "shop-eu"
    listed = (await api.get("/v1/admin/api-keys", headers=api_headers)).json()
    mine = [k for k in listed if k["key_id"] == created["key_id"]]
    assert len(mine) == 1 and "key" not in mine[0]
    async with platform.engine("ingest").connect() as conn:
        stored = await conn.scalar(text("select key_hash from api_keys where key_id = :k"), {"k": created["key_id"]})
    assert stored and created["key"] not in stored
    assert (await api.post("/v1/interactions", json=interaction(), headers=bearer(created["key"]))).status_code == 202


async def test_rotation_keeps_dedup_and_revokes_the_old_key(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    old = await new_key(api, api_headers, source=f"shop-{uuid.uuid4().hex[:8]}")
    event = interaction()
    assert (await api.post("/v1/interactions", json=event, headers=bearer(old["key"]))).status_code == 202
    rotated = await api.post(f"/v1/admin/api-keys/{old['key_id']}/rotate", headers=api_headers)
    assert rotated.status_code == 201
    new = rotated.json()
    assert (new["source"], new["scopes"]) == (old["source"], old["scopes"])
    assert (await api.post("/v1/interactions", json=event, headers=bearer(new["key"]))).status_code == 200
    assert (await api.post("/v1/interactions", json=interaction(), headers=bearer(old["key"]))).status_code == 401
    assert (await api.post(f"/v1/admin/api-keys/{old['key_id']}/rotate", headers=api_headers)).status_code == 404


async def test_keys_without_a_source_dedupe_per_key(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    first, second = await new_key(api, api_headers), await new_key(api, api_headers)
    event = interaction()
    assert (await api.post("/v1/interactions", json=event, headers=bearer(first["key"]))).status_code == 202
    assert (await api.post("/v1/interactions", json=event, headers=bearer(second["key"]))).status_code == 202


async def test_revoked_key_is_refused(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    created = await new_key(api, api_headers)
    assert (await api.delete(f"/v1/admin/api-keys/{created['key_id']}", headers=api_headers)).status_code == 204
    assert (await api.delete(f"/v1/admin/api-keys/{created['key_id']}", headers=api_headers)).status_code == 404
    assert (await api.post("/v1/interactions", json=interaction(), headers=bearer(created["key"]))).status_code == 401
    listed = (await api.get("/v1/admin/api-keys?include_revoked=true", headers=api_headers)).json()
    assert any(k["key_id"] == created["key_id"] and k["revoked_at"] for k in listed)


async def test_scopes_are_enforced(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    reader = await new_key(api, api_headers, scopes=["profiles:read"])
    writer = await new_key(api, api_headers)
    assert (await api.post("/v1/interactions", json=interaction(), headers=bearer(reader["key"]))).status_code == 403
    assert (await api.get("/v1/admin/api-keys", headers=bearer(writer["key"]))).status_code == 403
    assert (await api.get("/v1/admin/api-keys")).status_code == 401
    assert (await api.post("/v1/interactions", json=interaction(), headers=bearer("cx_nope_nope"))).status_code == 401
    bad = await api.post("/v1/admin/api-keys", json={"name": "x", "scopes": ["root"]}, headers=api_headers)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "scopes"


async def test_rate_limited_key_gets_429_with_retry_after(api: httpx.AsyncClient, api_headers: dict[str, str]) -> None:
    limited = await new_key(api, api_headers, rate_limit_per_second=2)
    codes = [(await api.post("/v1/interactions", json=interaction(), headers=bearer(limited["key"]))) for _ in range(4)]
    assert [c.status_code for c in codes][:2] == [202, 202]
    assert codes[-1].status_code == 429
    assert int(codes[-1].headers["Retry-After"]) >= 1


def test_key_tool_creates_lists_rotates_and_revokes(platform: TestPlatform) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["create", "--name", "cli key", "--scope", "ingest:write", "--source", "cli-shop"])
    assert created.exit_code == 0, created.output
    key_id = created.output.split("key id:")[1].split()[0]
    assert "cx_" in created.output
    listed = runner.invoke(cli, ["list"])
    assert key_id in listed.output and "cli-shop" in listed.output
    rotated = runner.invoke(cli, ["rotate", key_id])
    assert rotated.exit_code == 0 and f"revoked: {key_id}" in rotated.output
    new_id = rotated.output.split("key id:")[1].split()[0]
    assert runner.invoke(cli, ["revoke", new_id]).exit_code == 0
    assert runner.invoke(cli, ["revoke", new_id]).exit_code == 1
    assert runner.invoke(cli, ["create", "--name", "x", "--scope", "root"]).exit_code != 0
