"""Loyalty: a points ledger credited from purchases, read by staff tools and mobile apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from loyalty.api import RulesCache, router
from loyalty.config import LoyaltySettings
from loyalty.rules import read_program_file
from loyalty.worker import build_runtime
from shared.app import create_service_app, serve
from shared.db import make_sessionmaker


def create_app(settings: LoyaltySettings | None = None) -> FastAPI:
    settings = settings or LoyaltySettings()
    runtime = build_runtime(settings)
    app = create_service_app(title="Loyalty", settings=settings, runtime=runtime, routers=[router])
    program = read_program_file(settings.rules_file)
    app.state.rules_cache = RulesCache(program.rules() if program else None, settings.rules_cache_seconds)
    _add_read_engine(app, settings)
    return app


def _add_read_engine(app: FastAPI, settings: LoyaltySettings) -> None:
    """A pool for the single-statement reads (member answers, ledger pages): autocommit, no pre-ping.

    Autocommit spares BEGIN and COMMIT, and without pre-ping a read is one round trip; after a
    database restart the first read on each stale connection fails and the pool is renewed.
    """
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.read_pool_size,
        max_overflow=settings.read_max_overflow,
        pool_recycle=settings.read_pool_recycle_seconds,
        isolation_level="AUTOCOMMIT",
    )
    app.state.read_sessionmaker = make_sessionmaker(engine)
    serve_app = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        try:
            async with serve_app(app) as state:
                yield state
        finally:
            await engine.dispose()

    app.router.lifespan_context = lifespan


def main() -> None:
    settings = LoyaltySettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
