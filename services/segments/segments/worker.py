"""Segments' background work: its consumer (subscribed to the topics it will use) and outbox relay."""

from __future__ import annotations

from segments.config import SegmentsSettings
from segments.handlers import HANDLERS
from shared.runtime import ServiceRuntime
from shared.topics import PRIVACY_ERASURES, PROFILES, PURCHASES

CONSUMES = [PROFILES, PURCHASES, PRIVACY_ERASURES]


def build_runtime(settings: SegmentsSettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=CONSUMES, handlers=HANDLERS)
