"""What every service answers the same way: health, readiness, 422 naming fields, 413."""

from __future__ import annotations

from collections.abc import AsyncIterator

import ingest.main
import orjson

from shared.logs import redact
from shared.testing import TestPlatform, eventually, running_app
from tests.support import purchase


async def test_health_and_readiness(platform: TestPlatform) -> None:
    async with running_app(ingest.main.create_app()) as api:
        assert (await api.get("/healthz")).json() == {"status": "ok"}

        async def is_ready() -> bool:
            return (await api.get("/readyz")).status_code == 200

        assert await eventually(is_ready)
        assert "/v1/purchases" in (await api.get("/openapi.json")).json()["paths"]


async def test_invalid_body_names_each_bad_field(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    body = purchase(currency="usd")
    body["items"][0]["quantity"] = 0
    del body["order_id"]
    async with running_app(ingest.main.create_app()) as api:
        answer = await api.post("/v1/purchases", json=body, headers=api_headers)
    assert answer.status_code == 422
    fields = {error["field"] for error in answer.json()["errors"]}
    assert fields == {"currency", "items.0.quantity", "order_id"}


async def test_malformed_json_is_422_not_500(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    async with running_app(ingest.main.create_app()) as api:
        answer = await api.post(
            "/v1/purchases", content=b"{oops", headers=api_headers | {"content-type": "application/json"}
        )
    assert answer.status_code == 422


async def test_body_over_one_mebibyte_is_413(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    body = purchase()
    body["items"][0]["name"] = "x" * (1024 * 1024)
    async with running_app(ingest.main.create_app()) as api:
        answer = await api.post("/v1/purchases", content=orjson.dumps(body), headers=api_headers)
        assert answer.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * 65_536

        streamed = await api.post("/v1/purchases", content=chunks(), headers=api_headers)
    assert streamed.status_code == 413


def test_logs_never_carry_emails_phones_keys_or_tokens() -> None:
    line = (
        "login jane.doe@example.com phone +1 (415) 555-0100 key cx_ab12cd_Zm9vYmFyYmF6cXV4cXV1eA "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjIn0.c2lnbmF0dXJl order 1234"
    )
    cleaned = redact(line)
    for secret in ("jane.doe", "555-0100", "Zm9vYmFy", "eyJhbGci"):
        assert secret not in cleaned
    assert "order 1234" in cleaned
