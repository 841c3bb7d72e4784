"""Feedback' background work: its consumer (subscribed to the topics it will use) and outbox relay."""

from __future__ import annotations

from feedback.config import FeedbackSettings
from feedback.handlers import HANDLERS
from shared.runtime import ServiceRuntime
from shared.topics import PRIVACY_ERASURES, SEGMENT_MEMBERSHIP

CONSUMES = [SEGMENT_MEMBERSHIP, PRIVACY_ERASURES]


def build_runtime(settings: FeedbackSettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=CONSUMES, handlers=HANDLERS)
