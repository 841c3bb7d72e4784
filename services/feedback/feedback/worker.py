"""Feedback's background work: segment memberships and erasure requests consumed, outbox relay."""

from __future__ import annotations

from feedback.config import FeedbackSettings
from feedback.handlers import BATCH_HANDLERS, HANDLERS
from shared.runtime import ServiceRuntime, run_worker
from shared.topics import PRIVACY_ERASURES, SEGMENT_MEMBERSHIP

CONSUMES = [SEGMENT_MEMBERSHIP, PRIVACY_ERASURES]


def build_runtime(settings: FeedbackSettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=CONSUMES, handlers=HANDLERS, batch_handlers=BATCH_HANDLERS)


if __name__ == "__main__":
    run_worker(build_runtime(FeedbackSettings()))
