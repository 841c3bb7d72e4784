"""Report routes (scope feedback:read): JSON by default, CSV with ?format=csv or Accept: text/csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from feedback import reports
from feedback.api import SettingsDep
from feedback.reports import GroupBy, Period, SentimentGroupBy, Window
from feedback.schemas import (
    ComplaintCategoriesReport,
    CsatReport,
    NpsReport,
    RatingsReport,
    ReportWindow,
    SentimentReport,
)
from shared.auth import require_scope
from shared.db import SessionDep

router = APIRouter(prefix="/v1/reports", tags=["reports"], dependencies=[Depends(require_scope("feedback:read"))])
Format = Literal["json", "csv"]
_CSV = {"text/csv": {"schema": {"type": "string"}}}
FromDay = Annotated[date | None, Query(alias="from", description="First day (UTC); default: `to` - 89 days")]
ToDay = Annotated[date | None, Query(alias="to", description="Last day, included (UTC); default: today")]
FormatQuery = Annotated[Format | None, Query(alias="format")]
Limit = Annotated[int | None, Query(ge=1)]


def _window(settings: SettingsDep, first: FromDay = None, last: ToDay = None) -> Window:
    if first and last and first > last:
        raise RequestValidationError(
            [{"loc": ("query", "from"), "msg": "must not be after to", "type": "value_error", "input": None}]
        )
    return Window.of(first, last, today=datetime.now(UTC).date(), default_days=settings.report_default_days)


WindowDep = Annotated[Window, Depends(_window)]


def _wants_csv(request: Request, fmt: Format | None) -> bool:
    return fmt == "csv" or (fmt is None and "text/csv" in request.headers.get("accept", ""))


def _csv(name: str, rows: Sequence[dict[str, Any]]) -> Response:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


def _answer(request: Request, fmt: Format | None, name: str, report: BaseModel) -> Response:
    if _wants_csv(request, fmt):
        rows = [dict(row) for row in report.model_dump(mode="json")["rows"]]
        return _csv(name, rows)
    return JSONResponse(report.model_dump(mode="json"))


def _report_window(window: Window) -> ReportWindow:
    return ReportWindow(start=window.start, end=window.end)


def _row_limit(settings: SettingsDep, limit: int | None) -> int:
    return min(limit or settings.report_max_rows, settings.report_max_rows)


async def _scored_report(
    request: Request,
    *,
    name: str,
    compute: Callable[..., Awaitable[tuple[list[dict[str, Any]], dict[str, Any]]]],
    model: type[NpsReport] | type[CsatReport],
    session: SessionDep,
    settings: SettingsDep,
    window: Window,
    period: Period,
    group_by: GroupBy | None,
    fmt: Format | None,
) -> Response:
    """NPS and CSAT share their shape: rows by period and group, and a total."""
    rows, total = await compute(
        session, window=window, period=period, group_by=group_by, limit=settings.report_max_rows
    )
    report = model.model_validate(
        {"window": _report_window(window), "period": period, "group_by": group_by, "rows": rows, "total": total}
    )
    return _answer(request, fmt, name, report)


@router.get("/nps", response_model=NpsReport, responses={200: {"content": _CSV}})
async def nps_report(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    window: WindowDep,
    period: Period = "month",
    group_by: GroupBy | None = None,
    fmt: FormatQuery = None,
) -> Response:
    return await _scored_report(
        request, name="nps", compute=reports.nps_report, model=NpsReport, session=session, settings=settings,
        window=window, period=period, group_by=group_by, fmt=fmt,
    )  # fmt: skip


@router.get("/csat", response_model=CsatReport, responses={200: {"content": _CSV}})
async def csat_report(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    window: WindowDep,
    period: Period = "month",
    group_by: GroupBy | None = None,
    fmt: FormatQuery = None,
) -> Response:
    return await _scored_report(
        request, name="csat", compute=reports.csat_report, model=CsatReport, session=session, settings=settings,
        window=window, period=period, group_by=group_by, fmt=fmt,
    )  # fmt: skip


@router.get("/sentiment", response_model=SentimentReport, responses={200: {"content": _CSV}})
async def sentiment_report(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    window: WindowDep,
    period: Period = "week",
    group_by: SentimentGroupBy | None = None,
    fmt: FormatQuery = None,
) -> Response:
    rows = await reports.sentiment_report(
        session, window=window, period=period, group_by=group_by, limit=settings.report_max_rows
    )
    report = SentimentReport.model_validate(
        {"window": _report_window(window), "period": period, "group_by": group_by, "rows": rows}
    )
    return _answer(request, fmt, "sentiment", report)


@router.get("/ratings", response_model=RatingsReport, responses={200: {"content": _CSV}})
async def ratings_report(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    window: WindowDep,
    limit: Limit = None,
    fmt: FormatQuery = None,
) -> Response:
    rows = await reports.ratings_report(session, window=window, limit=_row_limit(settings, limit))
    report = RatingsReport.model_validate({"window": _report_window(window), "rows": rows})
    return _answer(request, fmt, "ratings", report)


@router.get("/complaints", response_model=ComplaintCategoriesReport, responses={200: {"content": _CSV}})
async def complaint_categories_report(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    window: WindowDep,
    limit: Limit = None,
    fmt: FormatQuery = None,
) -> Response:
    rows = await reports.complaint_categories_report(
        session, window=window, now=datetime.now(UTC), limit=_row_limit(settings, limit)
    )
    report = ComplaintCategoriesReport.model_validate({"window": _report_window(window), "rows": rows})
    return _answer(request, fmt, "complaint_categories", report)
