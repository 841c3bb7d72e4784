"""Ingest: storefront events in, validated, deduplicated and published through the outbox."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from ingest.admin import router as admin_router
from ingest.api import router
from ingest.config import IngestSettings
from ingest.imports import router as imports_router
from ingest.schemas import BatchIn, IdentifyIn, InteractionIn, PurchaseIn, RefundIn
from ingest.worker import build_runtime
from shared.app import create_service_app, serve
from shared.runtime import settle_heap

# Request bodies parsed by the routes themselves, documented under components/schemas.
DOCUMENTED_BODIES = (PurchaseIn, RefundIn, InteractionIn, IdentifyIn, BatchIn)


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    app = create_service_app(
        title="Ingest",
        settings=settings,
        runtime=build_runtime(settings),
        routers=[router, imports_router, admin_router],
        body_limit_exempt=["/v1/imports"],
    )
    app.state.key_sources = {}
    app.state.event_writer = None  # made on the first request, once the pool exists
    _document_bodies(app)
    return app


def _document_bodies(app: FastAPI) -> None:
    """Add the request bodies the routes parse themselves to components/schemas."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, definitions = models_json_schema(
                [(model, "validation") for model in DOCUMENTED_BODIES], ref_template="#/components/schemas/{model}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def main() -> None:
    settings = IngestSettings()
    app = create_app(settings)
    # A 1,000-event batch allocates ~100k objects: collect young objects less often, and never
    # rescan the long-lived ones created at start-up.
    settle_heap(settings.gc_gen0_threshold)
    serve(app, settings)


if __name__ == "__main__":
    main()
