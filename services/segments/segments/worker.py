"""Segments' background work: its consumer (subscribed to the topics it will use) and outbox relay."""

from __future__ import annotations

from segments.config import SegmentsSettings
from segments.handlers import HANDLERS
from shared.runtime import ServiceRuntime, run_worker
from shared.topics import PRIVACY_ERASURES, PROFILES, PURCHASES

CONSUMES = [PROFILES, PURCHASES, PRIVACY_ERASURES]


def build_runtime(settings: SegmentsSettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=CONSUMES, handlers=HANDLERS)


if __name__ == "__main__":
    run_worker(build_runtime(SegmentsSettings()))
