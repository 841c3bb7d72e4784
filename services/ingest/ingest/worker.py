"""Ingest's background work: the outbox relay (it consumes nothing yet)."""

from __future__ import annotations

from ingest.config import IngestSettings
from shared.runtime import ServiceRuntime


def build_runtime(settings: IngestSettings) -> ServiceRuntime:
    return ServiceRuntime(settings)
