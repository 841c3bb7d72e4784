"""Loyalty's background work: the consumer, the outbox relay and the scheduled jobs."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from loyalty import idempotency, service
from loyalty.batch import batch_handlers_for
from loyalty.config import LoyaltySettings
from loyalty.handlers import handlers_for
from loyalty.rules import ProgramFile, read_program_file, seed_rules
from shared.jobs import every
from shared.runtime import Job, ServiceRuntime, run_worker
from shared.topics import FEEDBACK_SUBMISSIONS, IDENTITIES, PRIVACY_ERASURES, PURCHASES, SEGMENT_MEMBERSHIP

log = logging.getLogger(__name__)
CONSUMES = [PURCHASES, IDENTITIES, SEGMENT_MEMBERSHIP, FEEDBACK_SUBMISSIONS, PRIVACY_ERASURES]


def seed_rules_from_file(program: ProgramFile) -> Job:
    """Once at start: store the file's rules when the database has none (retried until it answers)."""

    async def job(runtime: ServiceRuntime) -> None:
        while True:
            try:
                async with runtime.sessionmaker() as session, session.begin():
                    seeded = await seed_rules(session, program=program)
                log.info("earning rules file", extra={"stored": seeded})
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storing the earning rules file failed, retrying")
                await asyncio.sleep(5.0)

    job.__name__ = "seed_rules_from_file"
    return job


def scheduled_jobs(settings: LoyaltySettings, program: ProgramFile | None) -> list[Job]:
    fallback = program.rules() if program else None

    async def expire_points(session: AsyncSession) -> None:
        await service.expire_lots(session, now=datetime.now(UTC), batch_size=settings.expiry_batch_size)

    async def review_tiers(session: AsyncSession) -> None:
        await service.review_tiers(
            session, now=datetime.now(UTC), batch_size=settings.tier_review_batch_size, fallback=fallback
        )

    async def forget_idempotency_keys(session: AsyncSession) -> None:
        cutoff = datetime.now(UTC) - timedelta(hours=settings.idempotency_key_retention_hours)
        await idempotency.forget_older_than(session, cutoff=cutoff)

    jobs = [
        every(settings.expiry_job_seconds, expire_points),
        every(settings.tier_review_job_seconds, review_tiers),
        every(settings.idempotency_cleanup_job_seconds, forget_idempotency_keys),
    ]
    return [*jobs, seed_rules_from_file(program)] if program else jobs


def build_runtime(settings: LoyaltySettings) -> ServiceRuntime:
    program = read_program_file(settings.rules_file)
    return ServiceRuntime(
        settings,
        consumes=CONSUMES,
        handlers=handlers_for(program),
        batch_handlers=batch_handlers_for(program),
        jobs=scheduled_jobs(settings, program),
    )


if __name__ == "__main__":
    run_worker(build_runtime(LoyaltySettings()))
