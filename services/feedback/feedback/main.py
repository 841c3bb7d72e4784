"""Feedback: NPS, CSAT, ratings, surveys and complaints."""

from __future__ import annotations

from fastapi import FastAPI

from feedback.api import router
from feedback.config import FeedbackSettings
from feedback.reports_api import router as reports_router
from feedback.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: FeedbackSettings | None = None) -> FastAPI:
    settings = settings or FeedbackSettings()
    return create_service_app(
        title="Feedback",
        description="NPS, CSAT, ratings, comments, complaints, surveys and reports (docs/api/feedback.md).",
        settings=settings,
        runtime=build_runtime(settings),
        routers=[router, reports_router],
    )


def main() -> None:
    settings = FeedbackSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
