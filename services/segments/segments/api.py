"""Segments HTTP API: thin routes over service.py; API keys with segments:read / segments:write."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime

from segments import recompute, service
from segments.config import SegmentsSettings
from segments.models import Segment
from segments.rules import RuleError
from segments.schemas import (
    BgNbdRead,
    ChangeRead,
    ClvFitRead,
    ClvFitRequest,
    CustomerSegmentRead,
    CustomerSegments,
    GammaGammaRead,
    HistoryPage,
    HoldoutRead,
    MemberRead,
    MembersPage,
    PredictionsRead,
    PreviewRead,
    PreviewRequest,
    RecomputeRead,
    RecomputeRequest,
    RfmRead,
    SegmentCreate,
    SegmentList,
    SegmentPatch,
    SegmentRead,
    SizeRead,
    SizesRead,
)
from shared.auth import require_scope
from shared.db import SessionDep

router = APIRouter(prefix="/v1", tags=["segments"])
READ = [Depends(require_scope("segments:read"))]
WRITE = [Depends(require_scope("segments:write"))]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _settings(request: Request) -> SegmentsSettings:
    settings: SegmentsSettings = request.app.state.settings
    return settings


Settings = Annotated[SegmentsSettings, Depends(_settings)]


def _rule_errors(error: RuleError) -> NoReturn:
    raise RequestValidationError(
        [{"loc": ("body", *loc), "msg": message, "type": kind, "input": None} for loc, message, kind in error.errors]
    )


async def _segment(session: SessionDep, segment_id: str) -> Segment:
    segment = await service.get_segment(session, segment_id=segment_id)
    if segment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "segment not found")
    return segment


def _segment_read(segment: Segment, size: int) -> SegmentRead:
    return SegmentRead(
        id=segment.id,
        key=segment.key,
        name=segment.name,
        kind=segment.kind,
        description=segment.description,
        rule=segment.rule,
        status=segment.status,
        size=size,
        created_at=segment.created_at,
        updated_at=segment.updated_at,
    )


@router.get("/customers/{customer_id}/rfm", response_model=RfmRead, dependencies=READ)
async def get_rfm(customer_id: str, session: SessionDep, as_of: AwareDatetime | None = None) -> RfmRead:
    """The stored scores; with `as_of`, computed for that moment against the current cut-points."""
    if as_of is not None:
        values = await service.rfm_as_of(session, customer_id=customer_id, as_of=as_of)
        if values is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no purchases by then (or no cut-points yet)")
        return RfmRead.model_validate(values)
    score = await service.get_rfm(session, customer_id=customer_id)
    if score is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no RFM scores for this customer (no purchases yet)")
    return RfmRead.model_validate(score, from_attributes=True)


@router.get("/customers/{customer_id}/predictions", response_model=PredictionsRead, dependencies=READ)
async def get_predictions(customer_id: str, session: SessionDep) -> PredictionsRead:
    prediction = await service.get_predictions(session, customer_id=customer_id)
    if prediction is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no predictions for this customer (no purchases or no model)")
    return PredictionsRead.model_validate(prediction, from_attributes=True)


@router.get("/customers/{customer_id}/segments", response_model=CustomerSegments, dependencies=READ)
async def get_customer_segments(customer_id: str, session: SessionDep) -> CustomerSegments:
    rows = await service.customer_segments(session, customer_id=customer_id)
    return CustomerSegments(
        customer_id=customer_id,
        segments=[
            CustomerSegmentRead(
                segment_id=segment.id,
                segment_key=segment.key,
                segment_name=segment.name,
                kind=segment.kind,
                reason=member.reason,
                entered_at=member.entered_at,
            )
            for member, segment in rows
        ],
    )


def _history_page(rows: Any, limit: int) -> HistoryPage:
    items = [
        ChangeRead(
            id=change.id,
            segment_id=change.segment_id,
            segment_key=segment.key,
            customer_id=change.customer_id,
            change=change.change,
            reason=change.reason,
            occurred_at=change.occurred_at,
        )
        for change, segment in rows
    ]
    return HistoryPage(items=items, next_before=items[-1].id if len(items) == limit else None)


@router.get("/customers/{customer_id}/segments/history", response_model=HistoryPage, dependencies=READ)
async def get_customer_history(
    customer_id: str, session: SessionDep, limit: Limit = 100, before: int | None = None
) -> HistoryPage:
    rows = await service.membership_history(session, customer_id=customer_id, limit=limit, before=before)
    return _history_page(rows, limit)


@router.get("/segments", response_model=SegmentList, dependencies=READ)
async def list_segments(
    session: SessionDep, kind: Annotated[str | None, Query(pattern="^(rfm|rule|cluster|predictive)$")] = None
) -> SegmentList:
    listed = await service.list_segments(session, kind=kind)
    return SegmentList(items=[_segment_read(segment, size) for segment, size in listed])


@router.post("/segments", response_model=SegmentRead, status_code=status.HTTP_201_CREATED, dependencies=WRITE)
async def create_segment(body: SegmentCreate, session: SessionDep, settings: Settings) -> SegmentRead:
    try:
        segment = await service.create_rule_segment(
            session, key=body.key, name=body.name, description=body.description, rule=body.rule, settings=settings
        )
    except RuleError as error:
        _rule_errors(error)
    except service.SegmentConflict as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    return _segment_read(segment, await service.segment_size(session, segment_id=segment.id))


@router.post("/segments/preview", response_model=PreviewRead, dependencies=READ)
async def preview_segment(body: PreviewRequest, session: SessionDep, settings: Settings) -> PreviewRead:
    size = settings.preview_sample_size if body.sample_size is None else body.sample_size
    try:
        preview = await service.preview_rule(session, rule=body.rule, settings=settings, sample_size=size)
    except RuleError as error:
        _rule_errors(error)
    return PreviewRead(count=preview.count, sample=preview.sample, description=preview.description)


@router.get("/segments/{segment_id}", response_model=SegmentRead, dependencies=READ)
async def get_segment(segment_id: str, session: SessionDep) -> SegmentRead:
    segment = await _segment(session, segment_id)
    return _segment_read(segment, await service.segment_size(session, segment_id=segment.id))


@router.patch("/segments/{segment_id}", response_model=SegmentRead, dependencies=WRITE)
async def patch_segment(segment_id: str, body: SegmentPatch, session: SessionDep, settings: Settings) -> SegmentRead:
    segment = await _segment(session, segment_id)
    try:
        await service.update_rule_segment(
            session, segment=segment, name=body.name, description=body.description, rule=body.rule, settings=settings
        )
    except RuleError as error:
        _rule_errors(error)
    except service.SegmentConflict as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    return _segment_read(segment, await service.segment_size(session, segment_id=segment.id))


@router.delete("/segments/{segment_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=WRITE)
async def delete_segment(segment_id: str, session: SessionDep) -> Response:
    segment = await _segment(session, segment_id)
    try:
        await service.delete_rule_segment(session, segment=segment)
    except service.SegmentConflict as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/segments/{segment_id}/members", response_model=MembersPage, dependencies=READ)
async def get_members(
    segment_id: str, session: SessionDep, limit: Limit = 100, after: str | None = None
) -> MembersPage:
    await _segment(session, segment_id)
    members = await service.segment_members(session, segment_id=segment_id, limit=limit, after=after)
    items = [MemberRead(customer_id=m.customer_id, reason=m.reason, entered_at=m.entered_at) for m in members]
    return MembersPage(items=items, next_after=items[-1].customer_id if len(items) == limit else None)


@router.get("/segments/{segment_id}/history", response_model=HistoryPage, dependencies=READ)
async def get_segment_history(
    segment_id: str,
    session: SessionDep,
    limit: Limit = 100,
    before: int | None = None,
    customer_id: str | None = None,
) -> HistoryPage:
    await _segment(session, segment_id)
    rows = await service.membership_history(
        session, segment_id=segment_id, customer_id=customer_id, limit=limit, before=before
    )
    return _history_page(rows, limit)


@router.get("/segments/{segment_id}/sizes", response_model=SizesRead, dependencies=READ)
async def get_segment_sizes(segment_id: str, session: SessionDep, limit: Limit = 100) -> SizesRead:
    await _segment(session, segment_id)
    sizes = await service.segment_sizes(session, segment_id=segment_id, limit=limit)
    return SizesRead(
        segment_id=segment_id,
        size=await service.segment_size(session, segment_id=segment_id),
        history=[SizeRead(measured_at=s.measured_at, size=s.size, entered=s.entered, exited=s.exited) for s in sizes],
    )


@router.post("/models/clv/fit", response_model=ClvFitRead, dependencies=WRITE)
async def fit_clv(session: SessionDep, settings: Settings, body: ClvFitRequest | None = None) -> ClvFitRead:
    body = body or ClvFitRequest()
    fit = await service.fit_clv(
        session, calibration_end=body.calibration_end, time_unit=body.time_unit, settings=settings
    )
    if fit is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "too few repeat customers before calibration_end to fit")
    gg = fit.gamma_gamma
    return ClvFitRead(
        bgnbd=BgNbdRead(r=fit.bgnbd.r, alpha=fit.bgnbd.alpha, a=fit.bgnbd.a, b=fit.bgnbd.b),
        gamma_gamma=GammaGammaRead(p=gg.p, q=gg.q, gamma=gg.gamma) if gg else None,
        log_likelihood=fit.bgnbd.log_likelihood,
        gamma_gamma_log_likelihood=gg.log_likelihood if gg else None,
        customers=fit.customers,
        time_unit=fit.time_unit,
        calibration_end=fit.calibration_end,
        holdout=HoldoutRead(
            predicted_repeat_purchases=fit.predicted_repeat_purchases,
            actual_repeat_purchases=fit.actual_repeat_purchases,
            days=fit.holdout_days,
        ),
        model_id=fit.model_id,
        active=body.calibration_end is None,
    )


@router.post("/recomputes", response_model=RecomputeRead, dependencies=WRITE)
async def run_recompute(session: SessionDep, settings: Settings, body: RecomputeRequest | None = None) -> RecomputeRead:
    summary = await recompute.recompute_all(session, settings=settings, as_of=body.as_of if body else None)
    return RecomputeRead(
        as_of=summary.as_of,
        customers=summary.customers,
        entered=summary.entered,
        exited=summary.exited,
        seconds=summary.seconds,
    )
