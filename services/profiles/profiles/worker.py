"""Profiles' background work: the consumer, the outbox relay, and the scheduled jobs
(publishing changed profiles, re-evaluating lifecycle stages, rebuilding recommendations)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession

from profiles.config import ProfilesSettings
from profiles.handlers import BATCH_HANDLERS, HANDLERS
from profiles.lifecycle import reevaluate_stages
from profiles.portrait import publish_profile_changes
from profiles.recommendations import affinity_changes, rebuild_recommendations
from profiles.service import utcnow
from shared.jobs import every
from shared.runtime import Job, ServiceRuntime, run_worker
from shared.topics import (
    ERASURE_CONFIRMATIONS,
    FEEDBACK_SUBMISSIONS,
    IDENTITIES,
    INTERACTIONS,
    LOYALTY_ACCOUNTS,
    PRIVACY_ERASURES,
    PURCHASES,
    SEGMENT_MEMBERSHIP,
)

log = logging.getLogger(__name__)

CONSUMES = [
    PURCHASES,
    INTERACTIONS,
    IDENTITIES,
    SEGMENT_MEMBERSHIP,
    LOYALTY_ACCOUNTS,
    FEEDBACK_SUBMISSIONS,
    PRIVACY_ERASURES,
    *ERASURE_CONFIRMATIONS.values(),
]


def jobs(settings: ProfilesSettings) -> list[Job]:
    async def publish_changed_profiles(runtime: ServiceRuntime) -> None:
        """Every interval, the dirty profiles in batches (PUBLISH_BATCH_SIZE), each batch in a
        transaction of its own, up to PUBLISH_MAX_PER_RUN a run (then on from there the next run).

        A batch's claimed rows stay locked until its transaction ends, and a consumer batch that
        touches one of them (the points.earned after a purchase, typically) waits: committing each
        batch holds them for one batch, not for the whole run (four).
        """
        after = ""  # where the last run stopped: bounded runs take every profile in turn
        while True:
            await asyncio.sleep(settings.publish_interval_seconds)
            try:
                after = await publish_run(runtime, after)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled job failed", extra={"job": "publish_changed_profiles"})

    async def publish_run(runtime: ServiceRuntime, after: str) -> str:
        claimed_total, wrapped = 0, not after
        while claimed_total < settings.publish_max_per_run:
            async with runtime.sessionmaker() as session, session.begin():
                claimed, _, after = await publish_profile_changes(session, settings=settings, now=utcnow(), after=after)
            claimed_total += claimed
            if claimed:
                continue
            if wrapped and not after:
                return ""
            after, wrapped = "", True  # once more from the first key: profiles made dirty behind the last one
        return after

    async def reevaluate_lifecycle_stages(session: AsyncSession) -> None:
        await reevaluate_stages(session, settings=settings, now=utcnow())

    rebuilt_at_changes: list[int | None] = [None]  # affinities' change counter at the last rebuild

    async def rebuild_item_neighbours(session: AsyncSession) -> None:
        # Only when affinities changed since the last rebuild: an idle service refitted the same model
        # every 5 minutes (all of affinities read, a second or more of CPU next to the API).
        changes = await affinity_changes(session)
        if changes is not None and changes == rebuilt_at_changes[0]:
            return
        await rebuild_recommendations(session, settings=settings)
        rebuilt_at_changes[0] = changes

    return [
        publish_changed_profiles,
        every(settings.lifecycle_interval_seconds, reevaluate_lifecycle_stages),
        every(settings.recommendation_rebuild_seconds, rebuild_item_neighbours),
    ]


def build_runtime(settings: ProfilesSettings) -> ServiceRuntime:
    return ServiceRuntime(
        settings, consumes=CONSUMES, handlers=HANDLERS, batch_handlers=BATCH_HANDLERS, jobs=jobs(settings)
    )


def main() -> None:
    run_worker(build_runtime(ProfilesSettings()))


if __name__ == "__main__":
    main()
