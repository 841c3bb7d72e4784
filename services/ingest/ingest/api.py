"""Ingest HTTP API: thin routes over service.ingest_events.

Bodies are parsed with orjson and validated event by event (not by FastAPI's body binding), so
field and cross-field errors come back together and a batch can reject events one at a time.
The routes use asyncpg's pool (small requests store through the shared GroupedWriter, holding no
connection while they wait) and answer with bytes orjson built: the response models document the
answers but are not built per request. The key check is called, not declared as a dependency:
FastAPI's dependency solving cost more than the check itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

from ingest.config import IngestSettings
from ingest.schemas import (
    BatchIn,
    BatchResult,
    EventAccepted,
    IdentifyIn,
    InteractionIn,
    Limits,
    PurchaseIn,
    RefundIn,
)
from ingest.service import Database, EventResult, GroupedWriter, ingest_events, source_of_key
from shared.auth import ApiKeyPrincipal, require_scope
from shared.errors import FieldError, as_validation_errors


class PlainRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself.

    FastAPI's request handler (parameter solving, response model) is skipped: on the hot routes it
    cost more than the endpoint's own Python. The route's declaration still documents it in OpenAPI,
    and errors raised reach the app's exception handlers as before.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


router = APIRouter(prefix="/v1", tags=["ingest"], route_class=PlainRoute)
authorise_writer = require_scope("ingest:write")
Writer = Annotated[ApiKeyPrincipal, Depends(authorise_writer)]  # for the routes that are not hot
DUPLICATE: dict[int | str, dict[str, Any]] = {
    200: {"model": EventAccepted, "description": "Already accepted: nothing published again"}
}


def settings_of(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings
    return settings


def limits(settings: IngestSettings) -> Limits:
    """The validation limits as of now."""
    return Limits(
        datetime.now(UTC),
        settings.max_future_skew,
        settings.interaction_type_set,
        settings.max_properties_bytes,
        settings.max_properties_keys,
    )


def database(request: Request) -> tuple[asyncpg.Pool, GroupedWriter]:
    """The pool and the writer that groups concurrent requests' stores (one per pool, made on first use)."""
    pool: asyncpg.Pool = request.app.state.runtime.pg_pool
    writer: GroupedWriter | None = request.app.state.event_writer
    if writer is None or writer.pool is not pool:
        writer = request.app.state.event_writer = GroupedWriter(pool)
    return pool, writer


async def source_for(request: Request, db: Database, principal: ApiKeyPrincipal) -> str:
    """The principal's source name; a key's source never changes, so it is cached for the process."""
    cache: dict[str, str] = request.app.state.key_sources
    source = cache.get(principal.key_id)
    if source is None:
        source = await source_of_key(db, key_id=principal.key_id)
        if len(cache) > 10_000:
            cache.clear()
        cache[principal.key_id] = source
    return source


async def read_json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as error:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"JSON decode error: {error}", "type": "json_invalid", "input": None}]
        ) from error


def _documented_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def json_response(content: Any, status_code: int) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def single_event_route(kind: str) -> Callable[..., Awaitable[Response]]:
    """The route for one event of a kind: 202 accepted, 200 duplicate, 422 naming each bad field."""

    async def accept(request: Request) -> Response:
        principal = await authorise_writer(request)
        settings = settings_of(request)
        raw = await read_json(request)
        pool, writer = database(request)
        [result] = await ingest_events(
            pool,
            source=await source_for(request, pool, principal),
            events_in=[(kind, raw)],
            limits=limits(settings),
            max_message_bytes=settings.max_message_bytes,
            writer=writer,
        )
        if result.status == "rejected":
            raise RequestValidationError(as_validation_errors(result.errors))
        # EventAccepted's shape.
        answer = {"status": result.status, "event_id": result.event_id or "", "id": result.id}
        return json_response(answer, status.HTTP_200_OK if result.status == "duplicate" else status.HTTP_202_ACCEPTED)

    return accept


for _path, _kind, _model in (
    ("/purchases", "purchase", PurchaseIn),
    ("/refunds", "refund", RefundIn),
    ("/interactions", "interaction", InteractionIn),
    ("/identify", "identify", IdentifyIn),
):
    router.add_api_route(
        _path,
        single_event_route(_kind),
        methods=["POST"],
        name=f"post_{_kind}",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=EventAccepted,
        responses=DUPLICATE,
        openapi_extra=_documented_body(_model),
    )


@router.post(
    "/batch",
    response_model=BatchResult,
    responses={413: {"description": "Over the event count or body size limit"}},
    openapi_extra=_documented_body(BatchIn),
)
async def post_batch(request: Request) -> Response:
    principal = await authorise_writer(request)
    settings = settings_of(request)
    body = await read_json(request)
    batch = body.get("events") if isinstance(body, dict) else None
    if not isinstance(batch, list):
        errors = [FieldError(field="events", message="must be a list of events", type="list_type")]
        raise RequestValidationError(as_validation_errors(errors))
    if len(batch) > settings.batch_max_events:
        raise HTTPException(413, f"a batch holds at most {settings.batch_max_events} events")
    pool, writer = database(request)
    results = await ingest_events(
        pool,
        source=await source_for(request, pool, principal),
        events_in=[(raw.get("kind") if isinstance(raw, dict) else None, raw) for raw in batch],
        limits=limits(settings),
        max_message_bytes=settings.max_message_bytes,
        writer=writer,
    )
    return json_response(batch_result(results), status.HTTP_200_OK)


def batch_result(results: list[EventResult]) -> dict[str, Any]:
    """BatchResult's shape."""
    return {
        "accepted": sum(r.status == "accepted" for r in results),
        "duplicates": sum(r.status == "duplicate" for r in results),
        "rejected": [
            {"index": r.index, "event_id": r.event_id, "errors": [e.model_dump() for e in r.errors]}
            for r in results
            if r.status == "rejected"
        ],
    }
