"""Loyalty HTTP API: staff use API keys (loyalty:read, loyalty:write, admin); a customer token reaches only /v1/me."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Receive, Scope, Send

from loyalty import idempotency, rules, service
from loyalty.config import LoyaltySettings
from loyalty.reads import MemberReads
from loyalty.rules import CampaignWrite, EarningRules
from loyalty.schemas import (
    AdjustmentCreate,
    AdjustmentRead,
    CampaignRead,
    MemberRead,
    RedemptionCreate,
    RedemptionRead,
    RulesRead,
    TransactionPage,
    TransactionRead,
)
from shared.auth import CustomerDep, current_customer, require_scope
from shared.db import PgDep, SessionDep

router = APIRouter(prefix="/v1", tags=["loyalty"])
READ = [Depends(require_scope("loyalty:read"))]
WRITE = [Depends(require_scope("loyalty:write"))]
ADMIN = [Depends(require_scope("admin"))]


@dataclass
class RulesCache:
    """Earning rules held in memory for a few seconds: member answers need the tier thresholds."""

    fallback: EarningRules | None
    ttl_seconds: float
    _rules: EarningRules | None = None
    _until: float = 0.0

    async def get(self, connection: asyncpg.Connection) -> EarningRules:
        if self._rules is None or time.monotonic() >= self._until:
            row = await connection.fetchrow("SELECT document FROM earning_rules")
            self._rules = EarningRules.model_validate(row["document"]) if row else (self.fallback or EarningRules())
            self._until = time.monotonic() + self.ttl_seconds
        return self._rules

    def forget(self) -> None:
        self._rules = None


async def rules_cache(request: Request) -> RulesCache:  # async: a sync dependency would run in a thread
    cache: RulesCache = request.app.state.rules_cache
    return cache


RulesCacheDep = Annotated[RulesCache, Depends(rules_cache)]
MAX_CUSTOMER_ID = 128
CustomerId = Annotated[str, PathParam(min_length=1, max_length=MAX_CUSTOMER_ID)]
IdempotencyKeyHeader = Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)]


def _member_reads(request: Request) -> MemberReads:
    """The process's member reader, made with the app's first member read (after start-up made the pool)."""
    state = request.app.state
    reads: MemberReads | None = getattr(state, "member_reads", None)
    if reads is None:
        runtime = state.runtime

        def pool() -> asyncpg.Pool:
            assert runtime.pg_pool is not None, "the runtime has started"
            return runtime.pg_pool

        reads = state.member_reads = MemberReads(pool, state.rules_cache, state.settings)
    return reads


async def _member_answer(request: Request, customer_id: str) -> bytes | None:
    """The member answer, read with the others waiting in this turn of the loop (loyalty.reads); None: no member."""
    if len(customer_id) > MAX_CUSTOMER_ID:
        return None  # a token's sub no member can have
    return await _member_reads(request).answer(customer_id)


async def _member_response(request: Request, customer_id: str) -> Response:
    answer = await _member_answer(request, customer_id)
    if answer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "member not found")
    return Response(answer, media_type="application/json")


_require_read = require_scope("loyalty:read")


class _MemberRoute(APIRoute):
    """GET /v1/members/{id} answered from ASGI straight away: the same auth function, statement and error
    handlers as the endpoint, without FastAPI's per-request machinery (request parsing into parameters,
    dependency solving, exit stacks) that cost about half of this route's CPU. The endpoint still documents
    the route (its parameters and `response_model` make the OpenAPI schema) and answers what this leaves
    to it (an over-long id's 422, other methods). Exceptions raised here reach the application's handlers.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        customer_id: str = scope["path_params"]["customer_id"]
        # Too long: the endpoint's validation answers 422 (after the API key check), as always.
        if scope["method"] == "GET" and 1 <= len(customer_id) <= MAX_CUSTOMER_ID:
            request = Request(scope, receive, send)
            await _require_read(request)
            await (await _member_response(request, customer_id))(scope, receive, send)
            return
        await super().handle(scope, receive, send)


# The hottest routes: auth, then the member answer read with the others waiting, JSON bytes built once.
# `response_model` documents the answer; _MemberRoute and MyMemberFastPath answer GETs without running them.
async def get_member(customer_id: CustomerId, request: Request) -> Response:
    return await _member_response(request, customer_id)


async def get_me(customer: CustomerDep, request: Request) -> Response:
    return await _member_response(request, customer.customer_id)


router.add_api_route(
    "/members/{customer_id}",
    get_member,
    methods=["GET"],
    response_model=MemberRead,
    dependencies=[Depends(_require_read)],
    route_class_override=_MemberRoute,
)
router.add_api_route("/me", get_me, methods=["GET"], response_model=MemberRead)  # its 200s: MyMemberFastPath


class MyMemberFastPath:
    """`GET /v1/me` with a valid token of an existing member, answered before the routing and most middleware.

    The hottest request of the service (mobile balances): routing and middleware were 10-20 % of its CPU.
    Only the answer that the route would give with 200 is given here, with the route's own auth and
    reader, so the same bytes; anything else (no or a bad token, no member, an error) goes to the application untouched,
    which answers it as always (a GET has no body to have been read).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/v1/me":
            answer = await self._answer(scope)
            if answer is not None:
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": answer})
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> bytes | None:
        request = Request(scope)
        try:
            customer = await current_customer(request)
            return await _member_answer(request, customer.customer_id)
        except Exception:  # 401, or the database down: the application answers it, as always
            return None


def _page_size(request: Request, limit: int | None) -> int:
    settings: LoyaltySettings = request.app.state.settings
    return min(limit or settings.transactions_page_size, settings.transactions_max_page_size)


_LEDGER_PAGE = """
    SELECT id, kind, points, balance_after, cause_type, cause_id, reason, occurred_at, created_at,
           expires_at, remaining, shortfall
    FROM ledger_entries
    WHERE customer_id = $1 AND ($2::bigint IS NULL OR id < $2)
    ORDER BY id DESC LIMIT $3
"""


async def _transactions(
    connection: asyncpg.Connection, *, customer_id: str, limit: int, cursor: str | None
) -> TransactionPage:
    if await connection.fetchval("SELECT 1 FROM members WHERE customer_id = $1", customer_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "member not found")
    rows = await connection.fetch(_LEDGER_PAGE, customer_id, int(cursor) if cursor is not None else None, limit + 1)
    items = [
        TransactionRead(
            entry_id=row["id"],
            kind=row["kind"],
            points=row["points"],
            balance_after=row["balance_after"],
            cause_type=row["cause_type"],
            cause_id=row["cause_id"],
            reason=row["reason"],
            occurred_at=row["occurred_at"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            remaining=row["remaining"],
            shortfall=row["shortfall"],
        )
        for row in rows[:limit]
    ]
    return TransactionPage(items=items, next_cursor=str(rows[limit - 1]["id"]) if len(rows) > limit else None)


Limit = Annotated[int | None, Query(ge=1, le=1000, description="entries per page (default 50, at most 200)")]
Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")]


@router.get("/members/{customer_id}/transactions", response_model=TransactionPage, dependencies=READ)
async def list_member_transactions(
    customer_id: CustomerId, connection: PgDep, request: Request, limit: Limit = None, cursor: Cursor = None
) -> TransactionPage:
    return await _transactions(connection, customer_id=customer_id, limit=_page_size(request, limit), cursor=cursor)


@router.get("/me/transactions", response_model=TransactionPage)
async def list_my_transactions(
    customer: CustomerDep, connection: PgDep, request: Request, limit: Limit = None, cursor: Cursor = None
) -> TransactionPage:
    return await _transactions(
        connection, customer_id=customer.customer_id, limit=_page_size(request, limit), cursor=cursor
    )


def _key_reused() -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "loc": ("header", "Idempotency-Key"),
                "msg": "this key was already used with a different request",
                "type": "idempotency_key_reused",
                "input": None,
            }
        ]
    )


async def _act(act: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    try:
        return await act()
    except service.MemberNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "member not found") from None
    except service.InsufficientPoints as short:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"insufficient points: balance {short.balance}, requested {short.requested}"
        ) from None


async def _answer_once(
    session: AsyncSession,
    *,
    customer_id: str,
    key: str | None,
    operation: str,
    body: dict[str, Any],
    act: Callable[[], Awaitable[dict[str, Any]]],
) -> Response:
    """Run `act` once per (customer, key); the same key and body replay the first answer."""
    if len(customer_id) > MAX_CUSTOMER_ID:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "member not found")  # a token's sub no member can have
    if key is None:
        return _json(orjson.dumps(await _act(act)), status.HTTP_201_CREATED)
    try:
        stored = await idempotency.claim(
            session, customer_id=customer_id, key=key, fingerprint=idempotency.request_hash(operation, body)
        )
    except idempotency.IdempotencyKeyReused:
        raise _key_reused() from None
    if stored is not None:
        return _json(stored.body, stored.status_code, headers={"Idempotent-Replayed": "true"})
    answer = orjson.dumps(await _act(act))
    await idempotency.remember(session, customer_id=customer_id, key=key, status_code=201, body=answer)
    return _json(answer, status.HTTP_201_CREATED)


def _json(body: bytes, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code, headers=headers, media_type="application/json")


def _movement(moved: service.Movement, points: int, reason: str) -> dict[str, Any]:
    return {
        "customer_id": moved.customer_id,
        "points": points,
        "reason": reason,
        "balance": moved.balance,
        "entry_id": moved.entry_id,
        "created_at": moved.created_at,
    }


def _check_redemption(body: RedemptionCreate, request: Request) -> None:
    if body.points > request.app.state.settings.redemption_max_points:
        raise RequestValidationError(
            [{"loc": ("body", "points"), "msg": "over the redemption limit", "type": "less_than_equal", "input": None}]
        )


async def _redeem(
    session: AsyncSession, request: Request, customer_id: str, key: str, body: RedemptionCreate
) -> Response:
    _check_redemption(body, request)

    async def act() -> dict[str, Any]:
        moved = await service.redeem(session, customer_id=customer_id, points=body.points, reason=body.reason)
        answer = RedemptionRead(redemption_id=moved.cause_id, **_movement(moved, body.points, body.reason))
        return answer.model_dump(mode="json")

    return await _answer_once(
        session, customer_id=customer_id, key=key, operation="redemption", body=body.model_dump(), act=act
    )


_CREATED: dict[int | str, dict[str, Any]] = {
    201: {"model": RedemptionRead},
    409: {"description": "beyond the balance; nothing changed"},
}


@router.post("/members/{customer_id}/redemptions", status_code=201, responses=_CREATED, dependencies=WRITE)
async def redeem_member_points(
    customer_id: CustomerId, body: RedemptionCreate, key: IdempotencyKeyHeader, session: SessionDep, request: Request
) -> Response:
    return await _redeem(session, request, customer_id, key, body)


@router.post("/me/redemptions", status_code=201, responses=_CREATED)
async def redeem_my_points(
    customer: CustomerDep, body: RedemptionCreate, key: IdempotencyKeyHeader, session: SessionDep, request: Request
) -> Response:
    return await _redeem(session, request, customer.customer_id, key, body)


@router.post(
    "/members/{customer_id}/adjustments",
    status_code=201,
    responses={201: {"model": AdjustmentRead}, 409: {"description": "a debit beyond the balance"}},
    dependencies=ADMIN,
)
async def adjust_member_points(
    customer_id: CustomerId,
    body: AdjustmentCreate,
    session: SessionDep,
    request: Request,
    cache: RulesCacheDep,
    key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
) -> Response:
    limit = request.app.state.settings.adjustment_max_points
    if body.points == 0 or abs(body.points) > limit:
        raise RequestValidationError(
            [{"loc": ("body", "points"), "msg": f"must be non-zero, at most {limit} either way", "type": "value_error"}]
        )

    async def act() -> dict[str, Any]:
        moved = await service.adjust(
            session, customer_id=customer_id, points=body.points, reason=body.reason, fallback=cache.fallback
        )
        answer = AdjustmentRead(adjustment_id=moved.cause_id, **_movement(moved, body.points, body.reason))
        return answer.model_dump(mode="json")

    # Without a key each request adjusts; with one, the same key replays the first answer.
    return await _answer_once(
        session,
        customer_id=customer_id,
        key=key,
        operation="adjustment",
        body=body.model_dump(),
        act=act,
    )


@router.get("/rules", response_model=RulesRead, dependencies=ADMIN)
async def get_rules(session: SessionDep, cache: RulesCacheDep) -> RulesRead:
    current, version = await rules.current_rules(session, fallback=cache.fallback)
    return RulesRead(**current.model_dump(), version=version)


@router.put("/rules", response_model=RulesRead, dependencies=ADMIN)
async def replace_rules(body: EarningRules, session: SessionDep, cache: RulesCacheDep) -> RulesRead:
    version = await rules.replace_rules(session, rules=body)
    cache.forget()
    return RulesRead(**body.model_dump(), version=version)


@router.get("/campaigns", response_model=list[CampaignRead], dependencies=ADMIN)
async def list_campaigns(session: SessionDep) -> list[CampaignRead]:
    return [CampaignRead.model_validate(c) for c in await rules.list_campaigns(session)]


@router.post("/campaigns", response_model=CampaignRead, status_code=201, dependencies=ADMIN)
async def create_campaign(body: CampaignWrite, session: SessionDep) -> CampaignRead:
    campaign = await rules.create_campaign(session, campaign=body)
    await session.refresh(campaign)
    return CampaignRead.model_validate(campaign)


@router.get("/campaigns/{campaign_id}", response_model=CampaignRead, dependencies=ADMIN)
async def get_campaign(campaign_id: str, session: SessionDep) -> CampaignRead:
    campaign = await rules.get_campaign(session, campaign_id=campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "campaign not found")
    return CampaignRead.model_validate(campaign)


@router.put("/campaigns/{campaign_id}", response_model=CampaignRead, dependencies=ADMIN)
async def replace_campaign(campaign_id: str, body: CampaignWrite, session: SessionDep) -> CampaignRead:
    campaign = await rules.replace_campaign(session, campaign_id=campaign_id, campaign=body)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "campaign not found")
    return CampaignRead.model_validate(campaign)


@router.delete("/campaigns/{campaign_id}", status_code=204, dependencies=ADMIN)
async def delete_campaign(campaign_id: str, session: SessionDep) -> Response:
    if not await rules.delete_campaign(session, campaign_id=campaign_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "campaign not found")
    return Response(status_code=204)
