"""Profiles: a live portrait of each customer."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from profiles.api import router
from profiles.config import ProfilesSettings
from profiles.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: ProfilesSettings | None = None) -> FastAPI:
    settings = settings or ProfilesSettings()
    return create_service_app(title="Profiles", settings=settings, runtime=build_runtime(settings), routers=[router])


def freeze_after_startup(app: FastAPI) -> None:
    """Once the app has started (pools, connections, uvicorn's objects), move everything alive out of the
    collector's way: a full collection during a request then walks only what requests left behind."""
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with started(app):
            gc.collect()
            gc.freeze()
            yield

    app.router.lifespan_context = lifespan


def main() -> None:
    settings = ProfilesSettings()
    app = create_app(settings)
    # What lives as long as the process goes out of the collector's way once the app has started,
    # so a full collection during a request does not walk it (it showed in the GET tail latency).
    freeze_after_startup(app)
    serve(app, settings)


if __name__ == "__main__":
    main()
