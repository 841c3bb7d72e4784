"""Ingest's background work: the outbox relay (it consumes nothing yet)."""

from __future__ import annotations

from ingest.config import IngestSettings
from shared.runtime import ServiceRuntime, run_worker


def build_runtime(settings: IngestSettings) -> ServiceRuntime:
    return ServiceRuntime(settings)


if __name__ == "__main__":
    run_worker(build_runtime(IngestSettings()))
