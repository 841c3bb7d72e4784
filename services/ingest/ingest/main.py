"""Ingest: storefront events in, validated, deduplicated and published through the outbox."""

from __future__ import annotations

from fastapi import FastAPI

from ingest.api import router
from ingest.config import IngestSettings
from ingest.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    return create_service_app(title="Ingest", settings=settings, runtime=build_runtime(settings), routers=[router])


def main() -> None:
    settings = IngestSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
