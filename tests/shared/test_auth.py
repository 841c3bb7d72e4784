"""API keys with scopes and customer tokens, checked through a real service's routes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import jwt
import loyalty.main
import pytest
from loyalty.config import LoyaltySettings
from sqlalchemy import text

from shared.auth import (
    ALL_SCOPES,
    CustomerPrincipal,
    CustomerTokenVerifier,
    generate_api_key,
    hash_api_key,
    issue_customer_token,
)
from shared.tables import api_keys
from shared.testing import TEST_JWT_SECRET, TestPlatform, running_app


@pytest.fixture
async def api(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(loyalty.main.create_app(LoyaltySettings(consumers_enabled=False))) as client:
        yield client


async def stored_key(platform: TestPlatform, scopes: list[str], *, revoked: bool = False) -> str:
    key_id, key = generate_api_key()
    async with platform.engine("loyalty").begin() as conn:
        await conn.execute(
            api_keys.insert().values(
                key_id=key_id, key_hash=hash_api_key(key), name="test", scopes=scopes,
                revoked_at=text("now()") if revoked else None,
            )
        )  # fmt: skip
    return key


async def member_of(platform: TestPlatform) -> str:
    customer = f"cus-{uuid.uuid4().hex[:10]}"
    async with platform.engine("loyalty").begin() as conn:
        await conn.execute(text("insert into members (customer_id, points) values (:c, 5)"), {"c": customer})
    return customer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_keys_are_stored_only_as_hashes(platform: TestPlatform) -> None:
    key = await stored_key(platform, ["loyalty:read"])
    async with platform.engine("loyalty").connect() as conn:
        stored = await conn.scalar(text("select count(*) from api_keys where key_hash = :k"), {"k": key})
    assert stored == 0 and len(hash_api_key(key)) == 64


async def test_missing_or_unknown_key_is_401(api: httpx.AsyncClient, platform: TestPlatform) -> None:
    customer = await member_of(platform)
    assert (await api.get(f"/v1/members/{customer}")).status_code == 401
    assert (await api.get(f"/v1/members/{customer}", headers=bearer("cx_nope_xxxxxxxxxxxxxxxx"))).status_code == 401
    revoked = await stored_key(platform, ["loyalty:read"], revoked=True)
    assert (await api.get(f"/v1/members/{customer}", headers=bearer(revoked))).status_code == 401


async def test_key_without_the_scope_is_403_and_with_it_200(api: httpx.AsyncClient, platform: TestPlatform) -> None:
    customer = await member_of(platform)
    wrong = await stored_key(platform, ["ingest:write"])
    right = await stored_key(platform, ["loyalty:read"])
    assert (await api.get(f"/v1/members/{customer}", headers=bearer(wrong))).status_code == 403
    answer = await api.get(f"/v1/members/{customer}", headers=bearer(right))
    assert answer.status_code == 200 and answer.json()["points"] == 5


async def test_customer_token_reaches_only_its_own_member(api: httpx.AsyncClient, platform: TestPlatform) -> None:
    mine, theirs = await member_of(platform), await member_of(platform)
    token = issue_customer_token(mine, TEST_JWT_SECRET)
    me = await api.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["customer_id"] == mine
    # A customer token is not an API key: staff routes refuse it.
    assert (await api.get(f"/v1/members/{theirs}", headers=bearer(token))).status_code == 401


@pytest.mark.parametrize(
    "make_token",
    [
        lambda sub: jwt.encode(
            {"sub": sub, "exp": int(time.time()) + 60}, "wrong-secret-wrong-secret-wrong-secret", "HS256"
        ),
        lambda sub: jwt.encode({"sub": sub, "exp": int(time.time()) - 60}, TEST_JWT_SECRET, "HS256"),
        lambda sub: jwt.encode({"sub": sub}, TEST_JWT_SECRET, "HS256"),
        lambda sub: jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, None, "none"),  # type: ignore[arg-type]
        lambda sub: issue_customer_token(sub, TEST_JWT_SECRET)[:-4] + "AAAA",
        lambda sub: "not-a-jwt",
    ],
    ids=["wrong-key", "expired", "no-exp", "alg-none", "tampered", "garbage"],
)
async def test_bad_customer_tokens_are_401(api: httpx.AsyncClient, platform: TestPlatform, make_token) -> None:  # type: ignore[no-untyped-def]
    customer = await member_of(platform)
    assert (await api.get("/v1/me", headers=bearer(make_token(customer)))).status_code == 401


def test_dev_key_has_every_scope() -> None:
    assert {"ingest:write", "loyalty:write", "admin"} <= set(ALL_SCOPES)


def test_a_remembered_customer_token_still_expires() -> None:
    verifier = CustomerTokenVerifier(secret=TEST_JWT_SECRET, public_key=None)
    now = int(time.time())
    token = jwt.encode({"sub": "cus-brief", "iat": now, "exp": now + 1}, TEST_JWT_SECRET, algorithm="HS256")
    assert verifier.verify(token) == CustomerPrincipal("cus-brief")
    assert verifier.verify(token) == CustomerPrincipal("cus-brief")  # from memory
    time.sleep(1.2)
    assert verifier.verify(token) is None


def test_a_tampered_copy_of_a_remembered_token_is_refused() -> None:
    verifier = CustomerTokenVerifier(secret=TEST_JWT_SECRET, public_key=None)
    token = issue_customer_token("cus-real", TEST_JWT_SECRET)
    assert verifier.verify(token) == CustomerPrincipal("cus-real")
    header, _, signature = token.split(".")
    forged_claims = jwt.utils.base64url_encode(b'{"sub":"cus-other","exp":9999999999}').decode()
    assert verifier.verify(f"{header}.{forged_claims}.{signature}") is None
    assert verifier.verify(token[:-2] + ("AA" if not token.endswith("AA") else "BB")) is None


def test_remembered_customer_tokens_stay_bounded() -> None:
    verifier = CustomerTokenVerifier(secret=TEST_JWT_SECRET, public_key=None, max_remembered=3)
    for n in range(10):
        assert verifier.verify(issue_customer_token(f"cus-{n}", TEST_JWT_SECRET)) == CustomerPrincipal(f"cus-{n}")
        assert len(verifier._verified) <= 3


def test_failed_customer_tokens_are_never_remembered() -> None:
    verifier = CustomerTokenVerifier(secret=TEST_JWT_SECRET, public_key=None)
    forged = issue_customer_token("cus-2", "another-secret-0123456789abcdef0123")
    assert verifier.verify(forged) is None
    assert verifier._verified == {}
