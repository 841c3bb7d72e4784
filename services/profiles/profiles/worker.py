"""Profiles' background work: its consumer (subscribed to the topics it will use) and outbox relay."""

from __future__ import annotations

from profiles.config import ProfilesSettings
from profiles.handlers import HANDLERS
from shared.runtime import ServiceRuntime, run_worker
from shared.topics import (
    FEEDBACK_SUBMISSIONS,
    IDENTITIES,
    INTERACTIONS,
    LOYALTY_ACCOUNTS,
    PRIVACY_ERASURES,
    PURCHASES,
    SEGMENT_MEMBERSHIP,
)

CONSUMES = [
    PURCHASES,
    INTERACTIONS,
    IDENTITIES,
    SEGMENT_MEMBERSHIP,
    LOYALTY_ACCOUNTS,
    FEEDBACK_SUBMISSIONS,
    PRIVACY_ERASURES,
]


def build_runtime(settings: ProfilesSettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=CONSUMES, handlers=HANDLERS)


if __name__ == "__main__":
    run_worker(build_runtime(ProfilesSettings()))
