"""The scheduled recompute catches up after a start, once, and only one instance runs it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from segments.config import SegmentsSettings
from segments.worker import build_runtime, catch_up_recompute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.testing import TestPlatform


async def test_a_start_catches_up_once_when_the_last_recompute_is_old(platform: TestPlatform) -> None:
    settings = SegmentsSettings(recompute_first_delay_seconds=0, recompute_interval_seconds=3600)
    async with platform.engine("segments").connect() as conn:
        outer = await conn.begin()
        try:
            await conn.execute(text("DELETE FROM recompute_runs"))
            runtime: Any = SimpleNamespace(
                sessionmaker=async_sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
            )
            job = catch_up_recompute(settings)
            await job(runtime)
            await job(runtime)  # the first run is fresh: nothing to catch up
            runs = (await conn.execute(text("SELECT count(*) FROM recompute_runs"))).scalar_one()
            assert runs == 1
        finally:
            await outer.rollback()


def test_no_schedule_when_the_interval_is_zero() -> None:
    assert build_runtime(SegmentsSettings(recompute_interval_seconds=0, consumers_enabled=False)).jobs == []
    assert len(build_runtime(SegmentsSettings(consumers_enabled=False)).jobs) == 2
