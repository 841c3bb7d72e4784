"""Surveys targeted by segment membership (kept order-independently), answered once per customer."""
# ruff: noqa: RUF001  (Chinese test sentences use full-width punctuation)

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import feedback.main
import httpx
import pytest
from feedback.config import FeedbackSettings
from feedback.handlers import BATCH_HANDLERS
from feedback.models import SegmentMembership
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.auth import issue_customer_token
from shared.envelope import Envelope, new_event
from shared.testing import TEST_JWT_SECRET, TestPlatform, rollback_session, running_app

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("feedback")) as session:
        yield session


def segment_event(kind: str, customer: str, key: str, at: datetime) -> Any:
    data = {
        "customer_id": customer,
        "segment_id": f"seg-{key}",
        "segment_key": key,
        "segment_name": key.title(),
        "kind": "rule",
        "reason": "test",
        "occurred_at": at.isoformat(),
    }
    return new_event(type=f"segment.{kind}", source="cx.segments", subject=customer, data=data, time=at)


async def is_member(session: AsyncSession, customer: str, key: str) -> bool | None:
    return (
        await session.execute(
            select(SegmentMembership.is_member).where(
                SegmentMembership.customer_id == customer, SegmentMembership.segment_key == key
            )
        )
    ).scalar_one_or_none()


@pytest.mark.parametrize(
    ("events", "member"),
    [
        ([("entered", 1), ("exited", 2)], False),
        ([("entered", 1), ("exited", 2), ("entered", 3)], True),
        ([("entered", 5), ("exited", 5)], False),  # at equal times the exit wins
        ([("entered", 1), ("entered", 1), ("exited", 2), ("exited", 2)], False),  # redelivered
    ],
)
async def test_membership_ends_the_same_whatever_the_order_of_arrival(
    session: AsyncSession, events: list[tuple[str, int]], member: bool
) -> None:
    for n, order in enumerate(itertools.permutations(events)):
        customer = f"cus-order-{n}-{uuid.uuid4().hex[:6]}"
        for kind, hour in order:
            event = segment_event(kind, customer, "vip", T0 + timedelta(hours=hour))
            await BATCH_HANDLERS[event.type](session, [event])
        assert await is_member(session, customer, "vip") is member, order
        # The consumer hands a fetched batch over one event type at a time: the same end state.
        batched = f"{customer}-batched"
        events_by_type: dict[str, list[Envelope]] = {}
        for kind, hour in order:
            event = segment_event(kind, batched, "vip", T0 + timedelta(hours=hour))
            events_by_type.setdefault(event.type, []).append(event)
        for event_type, events_of_type in events_by_type.items():
            await BATCH_HANDLERS[event_type](session, events_of_type)
        assert await is_member(session, batched, "vip") is member, order


async def test_segment_event_without_a_customer_is_refused(session: AsyncSession) -> None:
    event = new_event(type="segment.entered", source="test", subject="x", data={"segment_key": "vip"})
    with pytest.raises(ValueError):
        await BATCH_HANDLERS["segment.entered"](session, [event])


def token(customer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_customer_token(customer, TEST_JWT_SECRET)}"}


SURVEY: dict[str, Any] = {
    "title": "How was your order?",
    "channel": "app",
    "questions": [
        {"id": "nps", "text": "Would you recommend us?", "type": "nps"},
        {"id": "why", "text": "Why?", "type": "text", "required": False},
        {"id": "mug", "text": "Rate the mug", "type": "rating", "sku": "MUG-01", "required": False},
        {"id": "where", "text": "Where did you buy?", "type": "choice", "options": ["web", "store"]},
    ],
}


@pytest.fixture
async def api(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    settings = FeedbackSettings(consumers_enabled=False, relay_enabled=False)
    async with running_app(feedback.main.create_app(settings)) as client:
        yield client


async def enter_segment(platform: TestPlatform, customer: str, key: str) -> None:
    async with async_sessionmaker(platform.engine("feedback"))() as session, session.begin():
        await BATCH_HANDLERS["segment.entered"](session, [segment_event("entered", customer, key, datetime.now(UTC))])


async def test_customer_is_asked_the_surveys_of_their_segments_until_answered(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    key = f"vip-{uuid.uuid4().hex[:6]}"
    member, outsider = f"cus-{uuid.uuid4().hex[:8]}", f"cus-{uuid.uuid4().hex[:8]}"
    await enter_segment(platform, member, key)
    created = await api.post("/v1/surveys", json=SURVEY | {"segment_keys": [key]}, headers=api_headers)
    assert created.status_code == 201, created.text
    survey_id = created.json()["id"]
    ended = SURVEY | {"segment_keys": [key], "ends_at": (datetime.now(UTC) - timedelta(days=1)).isoformat()}
    assert (await api.post("/v1/surveys", json=ended, headers=api_headers)).status_code == 201

    asked = (await api.get("/v1/me/surveys", headers=token(member))).json()
    assert [s["id"] for s in asked if key in s["segment_keys"]] == [survey_id]
    assert [
        s for s in (await api.get("/v1/me/surveys", headers=token(outsider))).json() if key in s["segment_keys"]
    ] == []
    assert (await api.get("/v1/me/surveys?channel=email", headers=token(member))).json() == []

    url = f"/v1/me/surveys/{survey_id}/answers"
    answers = {
        "answers": [
            {"question_id": "nps", "score": 9},
            {"question_id": "why", "text": "质量很好，非常满意"},
            {"question_id": "mug", "score": 4},
            {"question_id": "where", "choice": "store"},
        ]
    }
    assert (await api.post(url, json=answers, headers=token(outsider))).status_code == 403
    answered = await api.post(url, json=answers, headers=token(member))
    assert (answered.status_code, answered.json()["answers"]) == (201, 4)
    assert (await api.post(url, json=answers, headers=token(member))).status_code == 409
    asked = (await api.get("/v1/me/surveys", headers=token(member))).json()
    assert survey_id not in [s["id"] for s in asked]

    mine = (await api.get("/v1/me/feedback", headers=token(member))).json()
    assert sorted((f["kind"], f["score"]) for f in mine) == [("comment", None), ("nps", 9), ("rating", 4)]
    assert next(f for f in mine if f["kind"] == "comment")["sentiment"]["label"] == "positive"
    results = (await api.get(f"/v1/surveys/{survey_id}/results", headers=api_headers)).json()
    by_question = {q["question_id"]: q for q in results["questions"]}
    assert results["responses"] == 1
    assert by_question["nps"]["average_score"] == 9.0
    assert by_question["where"]["choices"] == {"store": 1}


async def test_survey_for_every_customer_and_survey_switched_off(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    survey = (await api.post("/v1/surveys", json=SURVEY | {"title": "Everyone"}, headers=api_headers)).json()
    customer = f"cus-{uuid.uuid4().hex[:8]}"
    assert survey["id"] in [s["id"] for s in (await api.get("/v1/me/surveys", headers=token(customer))).json()]
    switched = await api.patch(f"/v1/surveys/{survey['id']}", json={"active": False}, headers=api_headers)
    assert switched.json()["active"] is False
    assert survey["id"] not in [s["id"] for s in (await api.get("/v1/me/surveys", headers=token(customer))).json()]
    answer = {"answers": [{"question_id": "nps", "score": 9}, {"question_id": "where", "choice": "web"}]}
    closed = await api.post(f"/v1/me/surveys/{survey['id']}/answers", json=answer, headers=token(customer))
    assert closed.status_code == 403
    missing = await api.post(f"/v1/me/surveys/{uuid.uuid4()}/answers", json=answer, headers=token(customer))
    assert missing.status_code == 404


async def test_bad_surveys_and_bad_answers_are_refused_naming_each_field(
    api: httpx.AsyncClient, api_headers: dict[str, str]
) -> None:
    bad_survey = {
        "title": "Bad",
        "channel": "pigeon",
        "questions": [
            {"id": "a", "text": "?", "type": "choice", "options": ["only"]},
            {"id": "a", "text": "?", "type": "rating"},
        ],
        "starts_at": "2026-02-01T00:00:00Z",
        "ends_at": "2026-01-01T00:00:00Z",
    }
    answer = await api.post("/v1/surveys", json=bad_survey, headers=api_headers)
    assert {e["field"] for e in answer.json()["errors"]} == {
        "channel",
        "questions.0.options",
        "questions.1.id",
        "questions.1.sku",
        "ends_at",
    }
    survey = (await api.post("/v1/surveys", json=SURVEY, headers=api_headers)).json()
    bad_answers = {
        "answers": [
            {"question_id": "nps", "score": 11},
            {"question_id": "why", "text": ""},
            {"question_id": "where", "choice": "moon"},
            {"question_id": "nope", "score": 1},
        ]
    }
    customer = token(f"cus-{uuid.uuid4().hex[:8]}")
    refused = await api.post(f"/v1/me/surveys/{survey['id']}/answers", json=bad_answers, headers=customer)
    assert refused.status_code == 422
    assert {e["field"] for e in refused.json()["errors"]} == {
        "answers.0.score",
        "answers.1.text",
        "answers.2.choice",
        "answers.3.question_id",
    }
    incomplete = {"answers": [{"question_id": "where", "choice": "web"}]}
    refused = await api.post(f"/v1/me/surveys/{survey['id']}/answers", json=incomplete, headers=customer)
    assert [e["field"] for e in refused.json()["errors"]] == ["answers"]
