"""Ingest's background work: the outbox relay and the erasure consumer."""

from __future__ import annotations

from ingest.config import IngestSettings
from ingest.handlers import HANDLERS
from shared.runtime import ServiceRuntime, run_worker
from shared.topics import PRIVACY_ERASURES


def build_runtime(settings: IngestSettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=[PRIVACY_ERASURES], handlers=HANDLERS)


if __name__ == "__main__":
    run_worker(build_runtime(IngestSettings()))
