"""Feedback: NPS, CSAT, ratings, surveys and complaints."""

from __future__ import annotations

from fastapi import FastAPI

from feedback.config import FeedbackSettings
from feedback.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: FeedbackSettings | None = None) -> FastAPI:
    settings = settings or FeedbackSettings()
    return create_service_app(title="Feedback", settings=settings, runtime=build_runtime(settings), routers=[])


def main() -> None:
    settings = FeedbackSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
