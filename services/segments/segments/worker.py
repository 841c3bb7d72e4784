"""Segments' background work: its consumer, the outbox relay and the scheduled full recompute."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from segments.config import SegmentsSettings
from segments.handlers import build_batch_handlers, build_handlers
from segments.models import RecomputeRun
from segments.recompute import recompute_all
from shared.jobs import every
from shared.runtime import Job, ServiceRuntime, run_worker
from shared.topics import PRIVACY_ERASURES, PROFILES, PURCHASES

CONSUMES = [PROFILES, PURCHASES, PRIVACY_ERASURES]
RECOMPUTE_LOCK = zlib.crc32(b"segments:recompute")

log = logging.getLogger(__name__)


def recompute_segments(settings: SegmentsSettings) -> Callable[[AsyncSession], Awaitable[None]]:
    async def recompute_segments(session: AsyncSession) -> None:
        # One instance recomputes at a time; the others skip this round.
        if not (await session.execute(select(func.pg_try_advisory_xact_lock(RECOMPUTE_LOCK)))).scalar():
            return
        summary = await recompute_all(session, settings=settings)
        log.info(
            "full recompute done",
            extra={"customers": summary.customers, "entered": summary.entered, "exited": summary.exited},
        )

    return recompute_segments


def catch_up_recompute(settings: SegmentsSettings) -> Job:
    """Shortly after start, recompute if the last full recompute is older than the interval (or never ran)."""
    work = recompute_segments(settings)

    async def catch_up(runtime: ServiceRuntime) -> None:
        await asyncio.sleep(settings.recompute_first_delay_seconds)
        try:
            async with runtime.sessionmaker() as session, session.begin():
                last = (await session.execute(select(func.max(RecomputeRun.finished_at)))).scalar()
                due = datetime.now(UTC) - timedelta(seconds=settings.recompute_interval_seconds)
                if last is None or last < due:
                    await work(session)
        except Exception:
            log.exception("catch-up recompute failed")

    return catch_up


def build_runtime(settings: SegmentsSettings) -> ServiceRuntime:
    jobs: list[Job] = []
    if settings.recompute_interval_seconds > 0:
        jobs = [catch_up_recompute(settings), every(settings.recompute_interval_seconds, recompute_segments(settings))]
    return ServiceRuntime(
        settings,
        consumes=CONSUMES,
        handlers=build_handlers(settings),
        batch_handlers=build_batch_handlers(settings),
        jobs=jobs,
    )


if __name__ == "__main__":
    run_worker(build_runtime(SegmentsSettings()))
