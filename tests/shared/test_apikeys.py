"""Keys issued at ingest reach every service through ingest.apikeys.v1; revocation follows; rate limits."""

from __future__ import annotations

import ingest.main
import loyalty.main
from loyalty.config import LoyaltySettings
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.apikeys import issue_api_key, revoke_api_key
from shared.testing import TestPlatform, eventually, running_app


async def test_issued_key_works_on_another_service_and_stops_after_revocation(platform: TestPlatform) -> None:
    async with async_sessionmaker(platform.engine("ingest"))() as session, session.begin():
        issued, key = await issue_api_key(session, name="pos", scopes=["loyalty:read"], source="test")
    headers = {"Authorization": f"Bearer {key}"}
    fast_cache = LoyaltySettings(api_key_cache_seconds=0)
    async with running_app(ingest.main.create_app()), running_app(loyalty.main.create_app(fast_cache)) as loyalty_api:

        async def answers(code: int) -> bool:
            return (await loyalty_api.get("/v1/members/nobody", headers=headers)).status_code == code

        assert await eventually(lambda: answers(404), timeout=120)  # authorised: the member is unknown
        async with async_sessionmaker(platform.engine("ingest"))() as session, session.begin():
            assert await revoke_api_key(session, key_id=issued.key_id, source="test")
        assert await eventually(lambda: answers(401), timeout=120)


async def test_key_over_its_rate_limit_gets_429_with_retry_after(platform: TestPlatform) -> None:
    async with async_sessionmaker(platform.engine("loyalty"))() as session, session.begin():
        _, key = await issue_api_key(
            session, name="slow", scopes=["loyalty:read"], rate_limit_per_second=5, source="test"
        )
    headers = {"Authorization": f"Bearer {key}"}
    async with running_app(loyalty.main.create_app(LoyaltySettings(consumers_enabled=False))) as api:
        codes = [(await api.get("/v1/members/nobody", headers=headers)) for _ in range(12)]
    assert [c.status_code for c in codes[:5]] == [404] * 5
    limited = [c for c in codes if c.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
