"""Profiles HTTP API: staff tools read profiles with `profiles:read`; erasure needs `admin`."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from profiles import erasure, queries, recommendations
from profiles.config import ProfilesSettings
from profiles.queries import CustomerFilter, SortField
from profiles.schemas import (
    CustomerPage,
    CustomerProfile,
    ErasureAccepted,
    ErasureStatus,
    Recommendations,
    Stage,
)
from profiles.service import utcnow
from shared.auth import require_scope
from shared.db import SessionDep

router = APIRouter(prefix="/v1", tags=["profiles"])
may_read = require_scope("profiles:read")
READ = [Depends(may_read)]
ADMIN = [Depends(require_scope("admin"))]


async def _settings(request: Request) -> ProfilesSettings:  # async: a plain def runs in the thread pool
    settings: ProfilesSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[ProfilesSettings, Depends(_settings)]
_TIMES = ("first_purchase_at", "last_purchase_at", "last_seen_at", "updated_at")


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "msg": message, "type": "value_error", "input": None}])


def _aware(value: datetime | None) -> datetime | None:
    """A time without zone is read as UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("/customers/{customer_id}", response_model=CustomerProfile)
async def get_customer(customer_id: str, request: Request) -> Response:
    """Hot path: one query on a plain asyncpg connection, encoded once with orjson.

    The view is built to the CustomerProfile shape (documented above as the response model); returning
    a Response skips FastAPI's re-validation and re-encoding of it.
    """
    # The key check, pool and settings called here, not as dependencies: solving dependencies (an exit
    # stack for the connection generator, a thread for a plain def, ~10 % of the route's CPU for the
    # key check alone) cost more CPU than the query.
    await may_read(request)
    settings: ProfilesSettings = request.app.state.settings
    pool: asyncpg.Pool = request.app.state.runtime.pg_pool
    async with pool.acquire() as conn:
        view = await queries.fetch_customer_view(conn, customer_id=customer_id, settings=settings, now=utcnow())
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "customer not found")
    for field in _TIMES:  # UTC as "Z", as the response model used to write them
        if view[field] and view[field].endswith("+00:00"):
            view[field] = view[field][:-6] + "Z"
    return Response(orjson.dumps(view), media_type="application/json")


@router.get("/customers", response_model=CustomerPage, dependencies=READ)
async def list_customers(
    session: SessionDep,
    settings: SettingsDep,
    stage: Stage | None = None,
    min_revenue: Annotated[Decimal | None, Query(ge=0, description="net revenue at least")] = None,
    max_revenue: Annotated[Decimal | None, Query(ge=0, description="net revenue at most")] = None,
    last_purchase_before: datetime | None = None,
    last_purchase_after: datetime | None = None,
    tier: Annotated[str | None, Query(max_length=32)] = None,
    city: Annotated[str | None, Query(max_length=200, description="case-insensitive")] = None,
    category: Annotated[str | None, Query(max_length=200, description="bought or browsed this category")] = None,
    sort: SortField = "customer_id",
    order: Literal["asc", "desc"] = "asc",
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> CustomerPage:
    if limit is not None and limit > settings.list_max_limit:
        raise _invalid("limit", f"at most {settings.list_max_limit}")
    if min_revenue is not None and max_revenue is not None and min_revenue > max_revenue:
        raise _invalid("min_revenue", "greater than max_revenue")
    where = CustomerFilter(
        stage=stage,
        min_revenue=min_revenue,
        max_revenue=max_revenue,
        last_purchase_before=_aware(last_purchase_before),
        last_purchase_after=_aware(last_purchase_after),
        tier=tier,
        city=city,
        category=category,
    )
    try:
        items, next_cursor = await queries.list_customers(
            session,
            where=where,
            sort=sort,
            order=order,
            limit=limit or settings.list_default_limit,
            cursor=cursor,
            settings=settings,
        )
    except queries.InvalidCursor as error:
        raise _invalid("cursor", str(error)) from error
    return CustomerPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.get("/customers/{customer_id}/export", dependencies=READ)
async def export_customer(customer_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Everything profiles holds about the customer (access request)."""
    exported = await queries.export_customer(session, customer_id=customer_id, settings=settings, now=utcnow())
    if exported is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "customer not found")
    return exported


@router.get("/customers/{customer_id}/recommendations", response_model=Recommendations, dependencies=READ)
async def get_recommendations(
    customer_id: str,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> Recommendations:
    if limit is not None and limit > settings.recommendation_max_limit:
        raise _invalid("limit", f"at most {settings.recommendation_max_limit}")
    items = await recommendations.recommendations_for(
        session, customer_id=customer_id, limit=limit or settings.recommendation_limit, settings=settings
    )
    return Recommendations.model_validate({"customer_id": customer_id, "items": items})


@router.delete(
    "/customers/{customer_id}",
    response_model=ErasureAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=ADMIN,
)
async def erase_customer(customer_id: str, session: SessionDep) -> ErasureAccepted:
    request = await erasure.request_erasure(session, customer_id=customer_id, now=utcnow())
    return ErasureAccepted(request_id=request.request_id, customer_id=customer_id, status="pending")


@router.get("/erasures/{request_id}", response_model=ErasureStatus, dependencies=ADMIN)
async def get_erasure(request_id: str, session: SessionDep) -> Any:
    found = await erasure.erasure_status(session, request_id=request_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "erasure request not found")
    return found
