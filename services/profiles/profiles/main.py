"""Profiles: a live portrait of each customer."""

from __future__ import annotations

from fastapi import FastAPI

from profiles.api import router
from profiles.config import ProfilesSettings
from profiles.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: ProfilesSettings | None = None) -> FastAPI:
    settings = settings or ProfilesSettings()
    return create_service_app(title="Profiles", settings=settings, runtime=build_runtime(settings), routers=[router])


def main() -> None:
    settings = ProfilesSettings()
    serve(create_app(settings), settings)  # serve() freezes what start-up left alive (the GET tail)


if __name__ == "__main__":
    main()
