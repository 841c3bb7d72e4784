"""Loyalty: a points ledger credited from purchases, read by staff tools and mobile apps."""

from __future__ import annotations

from fastapi import FastAPI

from loyalty.api import router
from loyalty.config import LoyaltySettings
from loyalty.worker import build_runtime
from shared.app import create_service_app, serve


def create_app(settings: LoyaltySettings | None = None) -> FastAPI:
    settings = settings or LoyaltySettings()
    return create_service_app(title="Loyalty", settings=settings, runtime=build_runtime(settings), routers=[router])


def main() -> None:
    settings = LoyaltySettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
