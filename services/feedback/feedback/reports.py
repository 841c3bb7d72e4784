"""Reports over feedback: NPS, CSAT, ratings per product, complaint categories, sentiment trend.

Periods are calendar days, ISO weeks (starting Monday) or months in UTC, keyed by their first day.
Definitions are in docs/feedback.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

Period = Literal["day", "week", "month"]
GroupBy = Literal["channel", "product", "segment"]
SentimentGroupBy = Literal["channel", "product", "segment", "language", "kind"]

# Whitelisted SQL for each grouping: (expression, extra FROM clause, condition).
_GROUPS: dict[str, tuple[str, str, str]] = {
    "none": ("NULL", "", ""),
    "channel": ("f.channel", "", ""),
    "product": ("f.sku", "", "AND f.sku IS NOT NULL"),
    "segment": ("seg.key", "CROSS JOIN LATERAL unnest(f.segment_keys) AS seg(key)", ""),
    "language": ("f.language", "", ""),
    "kind": ("f.kind", "", ""),
}


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC, from whole days."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, first_day: date | None, last_day: date | None, *, today: date, default_days: int) -> Window:
        last = last_day or today
        first = first_day or last - timedelta(days=default_days - 1)
        return cls(_midnight(first), _midnight(last + timedelta(days=1)))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def nps(promoters: int, detractors: int, responses: int) -> float | None:
    """% promoters (9-10) - % detractors (0-6), from -100 to 100; None without responses."""
    return round(100.0 * (promoters - detractors) / responses, 1) if responses else None


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


async def _grouped(
    session: AsyncSession,
    *,
    measures: str,
    kind: str | None,
    window: Window,
    period: Period | None,
    group_by: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    expression, join, condition = _GROUPS[group_by or "none"]
    # No kind: every text that has a sentiment (the sentiment trend).
    selection = "f.kind = :kind" if kind else "f.sentiment_score IS NOT NULL"
    # Without period and group, one row even when nothing matched (the total).
    grouping = "GROUP BY 1, 2 ORDER BY 1, 2" if period or group_by else ""
    period_sql = "(date_trunc(:period, f.occurred_at AT TIME ZONE 'UTC'))::date" if period else "NULL::date"
    statement = text(
        f"""SELECT {period_sql} AS period_start, {expression} AS grp, {measures}
        FROM feedback_entries f {join}
        WHERE {selection} AND f.occurred_at >= :start AND f.occurred_at < :end {condition}
        {grouping} LIMIT :limit"""
    )
    params: dict[str, Any] = {"start": window.start, "end": window.end, "limit": limit}
    if period:
        params["period"] = period
    if kind:
        params["kind"] = kind
    return [dict(row._mapping) for row in await session.execute(statement, params)]


_NPS_MEASURES = """count(*) AS responses,
    count(*) FILTER (WHERE f.score >= 9) AS promoters,
    count(*) FILTER (WHERE f.score BETWEEN 7 AND 8) AS passives,
    count(*) FILTER (WHERE f.score <= 6) AS detractors"""


def _nps_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "period_start": row["period_start"],
        "group": row["grp"],
        "responses": row["responses"],
        "promoters": row["promoters"],
        "passives": row["passives"],
        "detractors": row["detractors"],
        "nps": nps(row["promoters"], row["detractors"], row["responses"]),
    }


async def nps_report(
    session: AsyncSession, *, window: Window, period: Period, group_by: GroupBy | None, limit: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows per (period, group) and the total over the window (each response counted once)."""
    rows = await _grouped(
        session, measures=_NPS_MEASURES, kind="nps", window=window, period=period, group_by=group_by, limit=limit
    )
    (total,) = await _grouped(
        session, measures=_NPS_MEASURES, kind="nps", window=window, period=None, group_by=None, limit=1
    )
    return [_nps_row(row) for row in rows], _nps_row(total)


_CSAT_MEASURES = """count(*) AS responses,
    count(*) FILTER (WHERE f.score >= 4) AS satisfied,
    avg(f.score) AS average"""


def _csat_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "period_start": row["period_start"],
        "group": row["grp"],
        "responses": row["responses"],
        "satisfied": row["satisfied"],
        "csat": _percent(row["satisfied"], row["responses"]),
        "average": None if row["average"] is None else round(float(row["average"]), 2),
    }


async def csat_report(
    session: AsyncSession, *, window: Window, period: Period, group_by: GroupBy | None, limit: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = await _grouped(
        session, measures=_CSAT_MEASURES, kind="csat", window=window, period=period, group_by=group_by, limit=limit
    )
    (total,) = await _grouped(
        session, measures=_CSAT_MEASURES, kind="csat", window=window, period=None, group_by=None, limit=1
    )
    return [_csat_row(row) for row in rows], _csat_row(total)


_SENTIMENT_MEASURES = """count(*) AS texts,
    avg(f.sentiment_score) AS average,
    count(*) FILTER (WHERE f.sentiment_label = 'positive') AS positive,
    count(*) FILTER (WHERE f.sentiment_label = 'neutral') AS neutral,
    count(*) FILTER (WHERE f.sentiment_label = 'negative') AS negative"""


async def sentiment_report(
    session: AsyncSession, *, window: Window, period: Period, group_by: SentimentGroupBy | None, limit: int
) -> list[dict[str, Any]]:
    rows = await _grouped(
        session,
        measures=_SENTIMENT_MEASURES,
        kind=None,
        window=window,
        period=period,
        group_by=group_by,
        limit=limit,
    )
    return [
        {
            "period_start": row["period_start"],
            "group": row["grp"],
            "texts": row["texts"],
            "average": round(float(row["average"]), 4),
            "positive": row["positive"],
            "neutral": row["neutral"],
            "negative": row["negative"],
        }
        for row in rows
    ]


async def ratings_report(session: AsyncSession, *, window: Window, limit: int) -> list[dict[str, Any]]:
    """Per product (sku): how many ratings, their average and the count of each star."""
    rows = await session.execute(
        text(
            """SELECT f.sku, count(*) AS ratings, avg(f.score) AS average,
                count(*) FILTER (WHERE f.score = 1) AS s1, count(*) FILTER (WHERE f.score = 2) AS s2,
                count(*) FILTER (WHERE f.score = 3) AS s3, count(*) FILTER (WHERE f.score = 4) AS s4,
                count(*) FILTER (WHERE f.score = 5) AS s5
            FROM feedback_entries f
            WHERE f.kind = 'rating' AND f.sku IS NOT NULL AND f.occurred_at >= :start AND f.occurred_at < :end
            GROUP BY f.sku ORDER BY count(*) DESC, f.sku LIMIT :limit"""
        ),
        {"start": window.start, "end": window.end, "limit": limit},
    )
    return [
        {
            "sku": row.sku,
            "ratings": row.ratings,
            "average": round(float(row.average), 2),
            "stars_1": row.s1,
            "stars_2": row.s2,
            "stars_3": row.s3,
            "stars_4": row.s4,
            "stars_5": row.s5,
        }
        for row in rows
    ]


async def complaint_categories_report(
    session: AsyncSession, *, window: Window, now: datetime, limit: int
) -> list[dict[str, Any]]:
    """Complaints opened in the window per category, most frequent first, with service-level outcomes."""
    rows = await session.execute(
        text(
            """SELECT c.category, count(*) AS complaints,
                count(*) FILTER (WHERE c.status <> 'resolved') AS unresolved,
                count(*) FILTER (WHERE c.status <> 'resolved' AND ((c.acknowledged_at IS NULL
                    AND c.first_response_due < :now) OR c.resolution_due < :now)) AS overdue,
                count(*) FILTER (WHERE c.status = 'resolved') AS resolved,
                count(*) FILTER (WHERE c.status = 'resolved' AND c.resolved_at <= c.resolution_due)
                    AS resolved_within_sla,
                avg(extract(epoch FROM c.resolved_at - c.opened_at) / 3600.0)
                    FILTER (WHERE c.status = 'resolved') AS average_resolution_hours
            FROM complaints c
            WHERE c.opened_at >= :start AND c.opened_at < :end
            GROUP BY c.category ORDER BY count(*) DESC, c.category LIMIT :limit"""
        ),
        {"start": window.start, "end": window.end, "now": now, "limit": limit},
    )
    return [
        {
            "category": row.category,
            "complaints": row.complaints,
            "unresolved": row.unresolved,
            "overdue": row.overdue,
            "resolved": row.resolved,
            "resolved_within_sla": row.resolved_within_sla,
            "resolved_within_sla_pct": _percent(row.resolved_within_sla, row.resolved),
            "average_resolution_hours": (
                None if row.average_resolution_hours is None else round(float(row.average_resolution_hours), 2)
            ),
        }
        for row in rows
    ]
