"""Erasure: the customer's texts and identity go, report aggregates stay, erasure.confirmed is published."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import feedback.main
import orjson
import pytest
from feedback import reports, service
from feedback.config import FeedbackSettings
from feedback.models import Complaint, FeedbackEntry, SegmentMembership, SurveyResponse
from feedback.reports import Window
from feedback.service import Submission, record_feedback
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from shared.envelope import new_event
from shared.testing import TestPlatform, eventually, producer, read_topic, rollback_session, running_app
from shared.topics import ERASURE_CONFIRMATIONS, PRIVACY_ERASURES, SEGMENT_MEMBERSHIP

AT = datetime(2004, 4, 4, 12, tzinfo=UTC)
NOW = datetime.now(UTC)
WINDOW = Window.of(date(2004, 1, 1), date(2004, 12, 31), today=date(2004, 12, 31), default_days=365)


async def give(session: AsyncSession, customer: str, kind: str, score: int | None, text: str | None) -> None:
    submission = Submission(
        event_id=uuid.uuid4().hex,
        customer_id=customer,
        kind=kind,
        score=score,
        text=text,
        channel="web",
        occurred_at=AT,
        order_id="ord-1",
    )
    await record_feedback(session, submission=submission, settings=FeedbackSettings())


async def count(session: AsyncSession, column: InstrumentedAttribute[str], customer: str) -> int:
    return int((await session.execute(select(func.count()).where(column == customer))).scalar_one())


async def test_erasure_forgets_the_customer_and_keeps_the_aggregates(platform: TestPlatform) -> None:
    customer, other = f"cus-{uuid.uuid4().hex[:10]}", f"cus-{uuid.uuid4().hex[:10]}"
    async with rollback_session(platform.engine("feedback")) as session:
        await service.apply_membership(
            session, customer_id=customer, segment_key="vip", segment_id="s1", is_member=True, changed_at=AT
        )
        await give(session, customer, "nps", 10, "Lovely staff, my name is Jane Doe")
        await give(session, customer, "complaint", None, "Call me on 555-0100")
        await give(session, other, "nps", 0, "Never again")
        before, _ = await reports.nps_report(session, window=WINDOW, period="month", group_by="segment", limit=9)
        _, total_before = await reports.nps_report(session, window=WINDOW, period="month", group_by=None, limit=9)

        token = await service.erase_customer(session, request_id="req-1", customer_id=customer, requested_at=AT, now=AT)

        assert await count(session, FeedbackEntry.customer_id, customer) == 0
        assert await count(session, Complaint.customer_id, customer) == 0
        assert await count(session, SurveyResponse.customer_id, customer) == 0
        assert await count(session, SegmentMembership.customer_id, customer) == 0
        kept = (await session.execute(select(FeedbackEntry).where(FeedbackEntry.customer_id == token))).scalars().all()
        assert len(kept) == 2
        assert all(e.text is None and e.order_id is None and e.erased_at == AT for e in kept)
        assert {e.sentiment_label for e in kept} != {None}  # sentiment stays for the trend
        after, _ = await reports.nps_report(session, window=WINDOW, period="month", group_by="segment", limit=9)
        _, total_after = await reports.nps_report(session, window=WINDOW, period="month", group_by=None, limit=9)
        assert (after, total_after) == (before, total_before)
        payloads = await session.execute(
            text("select topic, key, payload from outbox where topic = :topic and key = :key"),
            {"topic": ERASURE_CONFIRMATIONS["feedback"], "key": customer},
        )
        (row,) = payloads.all()
        confirmation = orjson.loads(row.payload)
        assert confirmation["type"] == "erasure.confirmed"
        assert confirmation["data"]["request_id"] == "req-1"
        assert confirmation["data"]["service"] == "feedback"


async def test_erasure_request_and_segment_events_are_consumed_from_the_broker(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    customer = f"cus-{uuid.uuid4().hex[:10]}"
    entered = new_event(
        type="segment.entered",
        source="cx.segments",
        subject=customer,
        data={
            "customer_id": customer,
            "segment_id": "seg-1",
            "segment_key": "e2e-vip",
            "segment_name": "VIP",
            "kind": "rule",
            "reason": "test",
            "occurred_at": AT.isoformat(),
        },
    )
    erasure = new_event(
        type="customer.erasure_requested",
        source="cx.profiles",
        subject=customer,
        data={"request_id": f"req-{customer}", "customer_id": customer, "requested_at": AT.isoformat()},
    )
    async with running_app(feedback.main.create_app()) as api:
        sent = {"event_id": "e1", "customer_id": customer, "kind": "comment", "text": "Hi, I am Jane", "channel": "app"}
        assert (await api.post("/v1/feedback", json=sent, headers=api_headers)).status_code == 202
        async with producer(platform.bootstrap) as kafka:
            await kafka.send_and_wait(SEGMENT_MEMBERSHIP, entered.encode(), key=customer.encode())
            await kafka.send_and_wait(PRIVACY_ERASURES, erasure.encode(), key=customer.encode())

        async def erased() -> bool:
            answer = await api.get(f"/v1/feedback?customer_id={customer}", headers=api_headers)
            return bool(answer.json() == [])

        await eventually(erased, timeout=120)
        records = await read_topic(platform.bootstrap, ERASURE_CONFIRMATIONS["feedback"], expect=1000, timeout=5)
        confirmations = [orjson.loads(r.value) for r in records if r.key == customer.encode()]
        assert [c["data"]["request_id"] for c in confirmations] == [f"req-{customer}"]


async def test_late_events_from_before_the_erasure_do_not_bring_the_customer_back(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    customer = f"cus-{uuid.uuid4().hex[:10]}"
    erased_at = datetime(2025, 6, 1, tzinfo=UTC)
    async with rollback_session(platform.engine("feedback")) as session:
        await service.erase_customer(
            session, request_id="req-late", customer_id=customer, requested_at=erased_at, now=erased_at
        )
        # A segment change from before the erasure, redelivered after it: dropped.
        await service.apply_membership(
            session, customer_id=customer, segment_key="vip", segment_id="s1", is_member=True, changed_at=AT
        )
        assert await count(session, SegmentMembership.customer_id, customer) == 0
        # The exit segments announces because of the erasure (after it): nothing to record either.
        await service.apply_membership(
            session, customer_id=customer, segment_key="vip", segment_id="s1", is_member=False, changed_at=NOW
        )
        assert await count(session, SegmentMembership.customer_id, customer) == 0
        # Feedback that occurred before the erasure and is posted (retried) after it: refused.
        late = Submission(
            event_id="late-1", customer_id=customer, kind="nps", score=3, text="Jane", channel="web", occurred_at=AT
        )
        with pytest.raises(service.CustomerErased):
            await record_feedback(session, submission=late, settings=FeedbackSettings())
        assert await count(session, FeedbackEntry.customer_id, customer) == 0
        # The customer coming back afterwards is a new customer relationship: stored.
        back = Submission(
            event_id="back-1", customer_id=customer, kind="nps", score=9, text=None, channel="web", occurred_at=NOW
        )
        await record_feedback(session, submission=back, settings=FeedbackSettings())
        assert await count(session, FeedbackEntry.customer_id, customer) == 1


async def test_feedback_posted_from_before_an_erasure_answers_409(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    customer = f"cus-{uuid.uuid4().hex[:10]}"
    async with running_app(feedback.main.create_app()) as api:
        async with AsyncSession(platform.engine("feedback")) as session, session.begin():
            await service.erase_customer(session, request_id="req-409", customer_id=customer, requested_at=NOW, now=NOW)
        late = {"event_id": "old-1", "customer_id": customer, "kind": "nps", "score": 4, "channel": "web"}
        answer = await api.post("/v1/feedback", json=late | {"occurred_at": AT.isoformat()}, headers=api_headers)
        assert answer.status_code == 409 and "occurred_at" in answer.json()["detail"]
        fresh = await api.post("/v1/feedback", json=late | {"event_id": "new-1"}, headers=api_headers)
        assert fresh.status_code == 202, fresh.text
