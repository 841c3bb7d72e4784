"""Report arithmetic on known data: NPS, CSAT, ratings, complaint categories, sentiment; JSON and CSV."""
# ruff: noqa: RUF001  (Chinese test sentences use full-width punctuation)

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import feedback.main
import pytest
from feedback import complaints, reports
from feedback.config import FeedbackSettings
from feedback.models import FeedbackEntry
from feedback.reports import Window
from feedback.service import Submission, record_feedback
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.testing import TestPlatform, rollback_session, running_app

# A year no other test writes in, so the window holds only this module's data.
JAN = datetime(2002, 1, 10, 12, tzinfo=UTC)
FEB = datetime(2002, 2, 10, 12, tzinfo=UTC)
WINDOW = Window.of(date(2002, 1, 1), date(2002, 12, 31), today=date(2002, 12, 31), default_days=365)


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("feedback")) as session:
        yield session


async def give(
    session: AsyncSession,
    kind: str,
    score: int | None,
    *,
    at: datetime = JAN,
    channel: str = "web",
    sku: str | None = None,
    text: str | None = None,
    category: str | None = None,
    segments: list[str] | None = None,
) -> uuid.UUID:
    submission = Submission(
        event_id=uuid.uuid4().hex,
        customer_id=f"cus-{uuid.uuid4().hex[:10]}",
        kind=kind,
        score=score,
        text=text,
        channel=channel,
        occurred_at=at,
        sku=sku,
        category=category,
    )
    recorded = await record_feedback(session, submission=submission, settings=FeedbackSettings())
    if segments:
        await session.execute(
            update(FeedbackEntry).where(FeedbackEntry.id == recorded.feedback_id).values(segment_keys=segments)
        )
    return recorded.complaint_id or recorded.feedback_id


async def test_nps_is_percent_promoters_minus_percent_detractors(session: AsyncSession) -> None:
    # January, web: 5 promoters, 3 passives, 2 detractors -> 50% - 20% = 30.
    for score in (9, 10, 10, 9, 9, 7, 8, 7, 0, 6):
        await give(session, "nps", score, segments=["vip"])
    # February, app: 1 promoter, 3 detractors -> 25% - 75% = -50.
    for score in (10, 3, 5, 6):
        await give(session, "nps", score, at=FEB, channel="app", segments=["vip", "new"])
    rows, total = await reports.nps_report(session, window=WINDOW, period="month", group_by=None, limit=100)
    assert [(r["period_start"], r["responses"], r["nps"]) for r in rows] == [
        (date(2002, 1, 1), 10, 30.0),
        (date(2002, 2, 1), 4, -50.0),
    ]
    # Whole window: 6 promoters, 5 detractors of 14 -> 42.857% - 35.714% = 7.1.
    assert (total["responses"], total["promoters"], total["passives"], total["detractors"]) == (14, 6, 3, 5)
    assert total["nps"] == 7.1
    by_channel, _ = await reports.nps_report(session, window=WINDOW, period="month", group_by="channel", limit=100)
    assert {(r["group"], r["nps"]) for r in by_channel} == {("web", 30.0), ("app", -50.0)}
    by_segment, total = await reports.nps_report(session, window=WINDOW, period="month", group_by="segment", limit=100)
    assert {(r["period_start"].month, r["group"], r["responses"]) for r in by_segment} == {
        (1, "vip", 10),
        (2, "new", 4),
        (2, "vip", 4),
    }
    assert total["responses"] == 14  # a response in two segments still counts once in the total


async def test_nps_by_week_and_day_and_empty_window(session: AsyncSession) -> None:
    await give(session, "nps", 10, at=datetime(2002, 1, 7, tzinfo=UTC))  # a Monday
    await give(session, "nps", 0, at=datetime(2002, 1, 13, 23, 59, tzinfo=UTC))  # the Sunday after
    weeks, _ = await reports.nps_report(session, window=WINDOW, period="week", group_by=None, limit=100)
    assert [(r["period_start"], r["nps"]) for r in weeks] == [(date(2002, 1, 7), 0.0)]
    days, _ = await reports.nps_report(session, window=WINDOW, period="day", group_by=None, limit=100)
    assert [(r["period_start"], r["nps"]) for r in days] == [(date(2002, 1, 7), 100.0), (date(2002, 1, 13), -100.0)]
    empty = Window.of(date(1999, 1, 1), date(1999, 1, 2), today=date(1999, 1, 2), default_days=2)
    rows, total = await reports.nps_report(session, window=empty, period="day", group_by=None, limit=100)
    assert (rows, total["responses"], total["nps"]) == ([], 0, None)


async def test_csat_counts_four_and_five_as_satisfied(session: AsyncSession) -> None:
    for score in (5, 4, 4, 3, 1):
        await give(session, "csat", score, sku="MUG-01")
    await give(session, "csat", 2, sku="TEA-05")
    rows, total = await reports.csat_report(session, window=WINDOW, period="month", group_by="product", limit=100)
    assert {(r["group"], r["responses"], r["satisfied"], r["csat"], r["average"]) for r in rows} == {
        ("MUG-01", 5, 3, 60.0, 3.4),
        ("TEA-05", 1, 0, 0.0, 2.0),
    }
    assert (total["responses"], total["csat"], total["average"]) == (6, 50.0, 3.17)


async def test_ratings_per_product_and_top_complaint_categories(session: AsyncSession) -> None:
    for score in (5, 4, 4):
        await give(session, "rating", score, sku="MUG-01")
    await give(session, "rating", 1, sku="TEA-05")
    ratings = await reports.ratings_report(session, window=WINDOW, limit=10)
    assert [(r["sku"], r["ratings"], r["average"], r["stars_4"]) for r in ratings] == [
        ("MUG-01", 3, 4.33, 2),
        ("TEA-05", 1, 1.0, 0),
    ]
    first, second, _ = [await give(session, "complaint", None, text="late", category="delivery") for _ in range(3)]
    await give(session, "complaint", None, text="charged twice", category="billing")
    await complaints.resolve(session, complaint_id=first, note=None, now=datetime(2002, 1, 11, 12, tzinfo=UTC))
    await complaints.resolve(session, complaint_id=second, note=None, now=datetime(2002, 1, 20, 12, tzinfo=UTC))
    now = datetime(2002, 6, 1, tzinfo=UTC)
    categories = await reports.complaint_categories_report(session, window=WINDOW, now=now, limit=10)
    assert categories[0] == {
        "category": "delivery",
        "complaints": 3,
        "unresolved": 1,
        "overdue": 1,
        "resolved": 2,
        "resolved_within_sla": 1,
        "resolved_within_sla_pct": 50.0,
        "average_resolution_hours": 132.0,  # (24 h + 240 h) / 2
    }
    assert [c["category"] for c in categories] == ["delivery", "billing"]


async def test_sentiment_trend_per_period_and_language(session: AsyncSession) -> None:
    await give(session, "comment", None, text="Great quality, I love it!")
    await give(session, "comment", None, text="质量很差，非常失望")
    await give(session, "comment", None, text="Terrible service.", at=FEB)
    rows = await reports.sentiment_report(session, window=WINDOW, period="month", group_by="language", limit=100)
    summary = {(r["period_start"].month, r["group"]): (r["texts"], r["positive"], r["negative"]) for r in rows}
    assert summary == {(1, "en"): (1, 1, 0), (1, "zh"): (1, 0, 1), (2, "en"): (1, 0, 1)}
    assert all(-1 <= r["average"] <= 1 for r in rows)


async def test_reports_answer_json_and_csv_over_http(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    day = datetime(2003, 5, 5, 10, tzinfo=UTC)
    async with async_sessionmaker(platform.engine("feedback"))() as session, session.begin():
        for score in (10, 9, 3):
            await give(session, "nps", score, at=day, channel="store")
    settings = FeedbackSettings(consumers_enabled=False, relay_enabled=False)
    async with running_app(feedback.main.create_app(settings)) as api:
        query = "from=2003-05-01&to=2003-05-31&period=day&group_by=channel"
        answer = await api.get(f"/v1/reports/nps?{query}", headers=api_headers)
        assert answer.status_code == 200, answer.text
        assert [(r["period_start"], r["group"], r["nps"]) for r in answer.json()["rows"]] == [
            ("2003-05-05", "store", 33.3)
        ]
        for extra, headers in (("&format=csv", api_headers), ("", api_headers | {"Accept": "text/csv"})):
            as_csv = await api.get(f"/v1/reports/nps?{query}{extra}", headers=headers)
            assert as_csv.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(as_csv.text)))
            assert [(r["period_start"], r["group"], r["responses"], r["nps"]) for r in rows] == [
                ("2003-05-05", "store", "3", "33.3")
            ]
        for path in ("csat", "ratings", "complaints", "sentiment"):
            assert (await api.get(f"/v1/reports/{path}?{query.split('&group_by')[0]}", headers=api_headers)).is_success
        bad = await api.get("/v1/reports/nps?period=year&group_by=planet", headers=api_headers)
        assert {e["field"] for e in bad.json()["errors"]} == {"query.period", "query.group_by"}
        reversed_window = await api.get("/v1/reports/nps?from=2003-02-01&to=2003-01-01", headers=api_headers)
        assert [e["field"] for e in reversed_window.json()["errors"]] == ["query.from"]
