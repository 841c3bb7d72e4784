"""Segments: RFM, rule, cluster and predictive segments."""

from __future__ import annotations

from fastapi import FastAPI

from segments.api import router
from segments.config import SegmentsSettings
from segments.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: SegmentsSettings | None = None) -> FastAPI:
    settings = settings or SegmentsSettings()
    return create_service_app(title="Segments", settings=settings, runtime=build_runtime(settings), routers=[router])


def main() -> None:
    settings = SegmentsSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
