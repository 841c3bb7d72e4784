"""Loyalty: a points ledger credited from purchases, read by staff tools and mobile apps."""

from __future__ import annotations

from fastapi import FastAPI

from loyalty.api import MyMemberFastPath, RulesCache, router
from loyalty.config import LoyaltySettings
from loyalty.rules import read_program_file
from loyalty.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: LoyaltySettings | None = None) -> FastAPI:
    settings = settings or LoyaltySettings()
    runtime = build_runtime(settings)
    app = create_service_app(title="Loyalty", settings=settings, runtime=runtime, routers=[router])
    program = read_program_file(settings.rules_file)
    app.state.rules_cache = RulesCache(program.rules() if program else None, settings.rules_cache_seconds)
    app.add_middleware(MyMemberFastPath)  # added last: the outermost of the application's own
    return app


def main() -> None:
    settings = LoyaltySettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
