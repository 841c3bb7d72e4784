"""Fixtures for ingest's tests: an in-process ingest that leaves nothing for other services' consumers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from ingest.config import IngestSettings
from ingest.main import create_app
from sqlalchemy import text

from shared.testing import TestPlatform, running_app


@pytest.fixture(scope="module", autouse=True)
async def forget_queued_events(platform: TestPlatform) -> AsyncIterator[None]:
    """Drop the outbox rows a test module queued: thousands of test events would slow every later consumer."""
    engine = platform.engine("ingest")
    async with engine.connect() as conn:
        started = await conn.scalar(text("select clock_timestamp()"))
    yield
    async with engine.begin() as conn:
        await conn.execute(text("delete from outbox where state = 'pending' and created_at >= :t"), {"t": started})


@pytest.fixture(scope="module")
async def api(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    """Ingest over HTTP, its relay and consumers off (events stay in the outbox to be read), no key cache."""
    settings = IngestSettings(consumers_enabled=False, relay_enabled=False, api_key_cache_seconds=0)
    async with running_app(create_app(settings)) as client:
        yield client
