"""Complaints: lifecycle, service-level targets per category, overdue lists, opened/resolved events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import feedback.main
import orjson
import pytest
from feedback import complaints
from feedback.config import FeedbackSettings, ServiceLevel
from feedback.models import Complaint
from feedback.service import Submission, record_feedback
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.testing import TestPlatform, rollback_session, running_app

OPENED = datetime(2001, 3, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("feedback")) as session:
        yield session


@pytest.fixture
def settings() -> FeedbackSettings:
    return FeedbackSettings(
        complaint_service_levels={"delivery": ServiceLevel(first_response_hours=4, resolution_hours=48)},
        default_service_level=ServiceLevel(first_response_hours=24, resolution_hours=120),
    )


async def open_complaint(
    session: AsyncSession, settings: FeedbackSettings, category: str | None = "delivery", customer: str = ""
) -> Complaint:
    submission = Submission(
        event_id=uuid.uuid4().hex,
        customer_id=customer or f"cus-{uuid.uuid4().hex[:10]}",
        kind="complaint",
        score=None,
        text="The parcel never came",
        channel="web",
        occurred_at=OPENED,
        category=category,
    )
    recorded = await record_feedback(session, submission=submission, settings=settings)
    assert recorded.complaint_id is not None
    complaint = await complaints.get_complaint(session, complaint_id=recorded.complaint_id)
    assert complaint is not None
    return complaint


async def overdue_ids(session: AsyncSession, now: datetime) -> set[uuid.UUID]:
    return {c.id for c in await complaints.list_complaints(session, now=now, overdue=True, limit=1000, offset=0)}


async def queued(session: AsyncSession, event_type: str, complaint_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(
        text("select payload from outbox where payload like :type and payload like :id order by id"),
        {"type": f'%"type":"{event_type}"%', "id": f"%{complaint_id}%"},
    )
    return [orjson.loads(row[0])["data"] for row in rows]


async def test_service_levels_come_from_the_category_or_the_default(
    session: AsyncSession, settings: FeedbackSettings
) -> None:
    delivery = await open_complaint(session, settings, "delivery")
    assert delivery.first_response_due == OPENED + timedelta(hours=4)
    assert delivery.resolution_due == OPENED + timedelta(hours=48)
    other = await open_complaint(session, settings, "packaging")
    assert (other.first_response_due, other.resolution_due) == (
        OPENED + timedelta(hours=24),
        OPENED + timedelta(days=5),
    )
    unnamed = await open_complaint(session, settings, None)
    assert unnamed.category == "general"
    (opened,) = await queued(session, "complaint.opened", delivery.id)
    assert opened["first_response_due"].startswith("2001-03-05T13:00")
    assert opened["resolution_due"].startswith("2001-03-07T09:00")


async def test_unanswered_complaint_becomes_overdue_for_first_response_until_acknowledged(
    session: AsyncSession, settings: FeedbackSettings
) -> None:
    complaint = await open_complaint(session, settings)
    assert complaint.id not in await overdue_ids(session, OPENED + timedelta(hours=3, minutes=59))
    late = OPENED + timedelta(hours=5)
    assert complaint.id in await overdue_ids(session, late)
    assert complaints.overdue_reasons(complaint, late) == ["first_response"]
    await complaints.acknowledge(session, complaint_id=complaint.id, assignee="agent-7", now=late)
    assert complaint.id not in await overdue_ids(session, late)
    assert (complaint.status, complaint.assignee) == ("acknowledged", "agent-7")
    past_resolution = OPENED + timedelta(hours=49)
    assert complaint.id in await overdue_ids(session, past_resolution)
    assert complaints.overdue_reasons(complaint, past_resolution) == ["resolution"]


async def test_resolving_publishes_whether_it_met_the_service_level(
    session: AsyncSession, settings: FeedbackSettings
) -> None:
    on_time = await open_complaint(session, settings)
    await complaints.resolve(session, complaint_id=on_time.id, note="refunded", now=OPENED + timedelta(hours=2))
    late = await open_complaint(session, settings)
    await complaints.acknowledge(session, complaint_id=late.id, assignee=None, now=OPENED + timedelta(hours=6))
    await complaints.resolve(session, complaint_id=late.id, note=None, now=OPENED + timedelta(hours=50))
    (first,) = await queued(session, "complaint.resolved", on_time.id)
    (second,) = await queued(session, "complaint.resolved", late.id)
    assert (first["within_sla"], first["first_response_within_sla"]) == (True, True)
    assert (second["within_sla"], second["first_response_within_sla"]) == (False, False)
    assert on_time.id not in await overdue_ids(session, OPENED + timedelta(days=30))


async def test_lifecycle_refuses_impossible_transitions_and_repeats_change_nothing(
    session: AsyncSession, settings: FeedbackSettings
) -> None:
    complaint = await open_complaint(session, settings)
    with pytest.raises(complaints.TransitionRefused):
        await complaints.reopen(session, complaint_id=complaint.id, now=OPENED, settings=settings)
    resolved_at = OPENED + timedelta(hours=1)
    await complaints.resolve(session, complaint_id=complaint.id, note=None, now=resolved_at)
    await complaints.resolve(session, complaint_id=complaint.id, note=None, now=resolved_at + timedelta(hours=1))
    assert complaint.resolved_at == resolved_at
    assert len(await queued(session, "complaint.resolved", complaint.id)) == 1
    with pytest.raises(complaints.TransitionRefused):
        await complaints.acknowledge(session, complaint_id=complaint.id, assignee=None, now=resolved_at)
    reopened_at = OPENED + timedelta(days=3)
    await complaints.reopen(session, complaint_id=complaint.id, now=reopened_at, settings=settings)
    assert (complaint.status, complaint.reopen_count) == ("reopened", 1)
    assert complaint.resolved_at is None
    assert complaint.resolution_due == reopened_at + timedelta(hours=48)
    assert complaint.id not in await overdue_ids(session, reopened_at + timedelta(hours=47))
    assert complaint.id in await overdue_ids(session, reopened_at + timedelta(hours=49))
    await complaints.resolve(session, complaint_id=complaint.id, note="fixed", now=reopened_at + timedelta(hours=1))
    assert len(await queued(session, "complaint.resolved", complaint.id)) == 2
    with pytest.raises(complaints.ComplaintNotFound):
        await complaints.resolve(session, complaint_id=uuid.uuid4(), note=None, now=OPENED)


async def test_overdue_complaints_are_listed_over_http(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    now = datetime.now(UTC)
    category = f"cat-{uuid.uuid4().hex[:8]}"
    settings = FeedbackSettings(consumers_enabled=False, relay_enabled=False)
    async with running_app(feedback.main.create_app(settings)) as api:

        async def post_complaint(hours_ago: float) -> str:
            sent = {
                "event_id": uuid.uuid4().hex,
                "customer_id": "cus-http-complaints",
                "kind": "complaint",
                "text": "Wrong size delivered",
                "channel": "email",
                "category": category,
                "occurred_at": (now - timedelta(hours=hours_ago)).isoformat(),
            }
            answer = await api.post("/v1/feedback", json=sent, headers=api_headers)
            assert answer.status_code == 202, answer.text
            return str(answer.json()["complaint_id"])

        fresh, stale = await post_complaint(1), await post_complaint(30)
        listed = await api.get(f"/v1/complaints?overdue=true&category={category}", headers=api_headers)
        assert [c["id"] for c in listed.json()["items"]] == [stale]
        assert listed.json()["items"][0]["overdue_reasons"] == ["first_response"]
        not_overdue = await api.get(f"/v1/complaints?overdue=false&category={category}", headers=api_headers)
        assert [c["id"] for c in not_overdue.json()["items"]] == [fresh]
        acked = await api.post(f"/v1/complaints/{stale}/acknowledge", json={"assignee": "agent-1"}, headers=api_headers)
        assert (acked.status_code, acked.json()["status"], acked.json()["overdue"]) == (200, "acknowledged", False)
        assert (await api.post(f"/v1/complaints/{fresh}/reopen", headers=api_headers)).status_code == 409
        resolved = await api.post(f"/v1/complaints/{fresh}/resolve", json={"note": "sent"}, headers=api_headers)
        assert resolved.json()["status"] == "resolved"
        assert (await api.post(f"/v1/complaints/{fresh}/reopen", headers=api_headers)).json()["status"] == "reopened"
        assignee = await api.patch(f"/v1/complaints/{fresh}", json={"assignee": "agent-2"}, headers=api_headers)
        assert assignee.json()["assignee"] == "agent-2"
        assert (await api.post(f"/v1/complaints/{uuid.uuid4()}/resolve", headers=api_headers)).status_code == 404
        assert (await api.get("/v1/complaints/not-a-uuid", headers=api_headers)).status_code == 422
