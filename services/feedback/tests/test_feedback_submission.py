"""POST /v1/feedback and /v1/me/feedback: every kind, bad input named by field, idempotence on event_id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import feedback.main
import httpx
import orjson
import pytest
from feedback.config import FeedbackSettings
from sqlalchemy import text

from shared.auth import issue_customer_token
from shared.testing import TEST_JWT_SECRET, TestPlatform, running_app


@pytest.fixture
async def api(platform: TestPlatform) -> AsyncIterator[httpx.AsyncClient]:
    # No consumers, no relay: outbox rows stay pending so tests can read what would be published.
    settings = FeedbackSettings(consumers_enabled=False, relay_enabled=False)
    async with running_app(feedback.main.create_app(settings)) as client:
        yield client


def body(kind: str = "nps", **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "customer_id": f"cus-{uuid.uuid4().hex[:12]}",
        "kind": kind,
        "channel": "web",
    }
    values.update(overrides)
    return values


async def published(platform: TestPlatform, feedback_id: str) -> list[dict[str, Any]]:
    """The feedback.* events queued in feedback's outbox that name this feedback."""
    async with platform.engine("feedback").connect() as conn:
        rows = await conn.execute(
            text("select payload from outbox where topic = 'feedback.submissions.v1' and payload like :id"),
            {"id": f"%{feedback_id}%"},
        )
        return [orjson.loads(row[0]) for row in rows]


def error_fields(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 422, answer.text
    return {error["field"] for error in answer.json()["errors"]}


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("nps", {"score": 9}),
        ("nps", {"score": 0, "text": "Too slow"}),
        ("csat", {"score": 4}),
        ("rating", {"score": 5, "sku": "MUG-01"}),
        ("rating", {"score": 2, "order_id": "ord-77"}),
        ("comment", {"text": "Nice shop"}),
        ("complaint", {"text": "My parcel never arrived", "category": "delivery"}),
    ],
)
async def test_every_kind_of_feedback_is_accepted_and_published(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform, kind: str, extra: dict[str, Any]
) -> None:
    sent = body(kind, **extra)
    answer = await api.post("/v1/feedback", json=sent, headers=api_headers)
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "accepted"
    assert (accepted["complaint_id"] is not None) == (kind == "complaint")
    assert (accepted["sentiment"] is not None) == ("text" in extra)
    stored = (await api.get(f"/v1/feedback/{accepted['feedback_id']}", headers=api_headers)).json()
    assert (stored["kind"], stored["score"], stored["customer_id"]) == (kind, extra.get("score"), sent["customer_id"])
    events = {e["type"]: e for e in await published(platform, accepted["feedback_id"])}
    submitted = events["feedback.submitted"]
    assert submitted["subject"] == sent["customer_id"]
    assert submitted["data"]["kind"] == kind and submitted["data"]["score"] == extra.get("score")
    assert "text" not in submitted["data"]
    if "text" in extra:
        assert extra["text"] not in orjson.dumps(submitted).decode()
    if kind == "complaint":
        assert events["complaint.opened"]["data"]["category"] == "delivery"


async def test_same_event_id_answers_duplicate_and_publishes_nothing_again(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    sent = body("csat", score=5)
    first = await api.post("/v1/feedback", json=sent, headers=api_headers)
    second = await api.post("/v1/feedback", json=sent | {"score": 1}, headers=api_headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["status"] == "duplicate"
    assert second.json()["feedback_id"] == first.json()["feedback_id"]
    assert len(await published(platform, first.json()["feedback_id"])) == 1


async def test_concurrent_posts_of_one_event_record_it_once(
    api: httpx.AsyncClient, api_headers: dict[str, str], platform: TestPlatform
) -> None:
    sent = body("complaint", text="Broken on arrival")
    answers = await asyncio.gather(*(api.post("/v1/feedback", json=sent, headers=api_headers) for _ in range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 7 + [202]
    assert len({a.json()["feedback_id"] for a in answers}) == 1
    assert len({a.json()["complaint_id"] for a in answers}) == 1
    events = await published(platform, answers[0].json()["feedback_id"])
    assert sorted(e["type"] for e in events) == ["complaint.opened", "feedback.submitted"]


@pytest.mark.parametrize(
    ("sent", "fields"),
    [
        (body("nps", score=11), {"score"}),
        (body("nps"), {"score"}),
        (body("csat", score=0), {"score"}),
        (body("rating", score=3), {"sku"}),
        (body("comment"), {"text"}),
        (body("comment", text="   "), {"text"}),
        (body("complaint", text="late", score=2), {"score"}),
        (body("nps", score=7, channel="pigeon"), {"channel"}),
        (body("nps", score=7, category="delivery"), {"category"}),
        (body("csat", score=6, channel="carrier-pigeon", text="x" * 5001), {"score", "channel", "text"}),
        (body("nps", score="7"), {"score"}),
        (body("nps", score=7.5), {"score"}),
        (body("survey", score=7), {"kind"}),
        (
            body("nps", score=7, event_id="", customer_id="bad id!", channel="Web!"),
            {"event_id", "customer_id", "channel"},
        ),
        (body("nps", score=7, occurred_at="2999-01-01T00:00:00Z"), {"occurred_at"}),
        (body("nps", score=7, occurred_at="2026-01-01T00:00:00"), {"occurred_at"}),
    ],
)
async def test_bad_feedback_is_refused_naming_each_bad_field(
    api: httpx.AsyncClient, api_headers: dict[str, str], sent: dict[str, Any], fields: set[str]
) -> None:
    assert error_fields(await api.post("/v1/feedback", json=sent, headers=api_headers)) == fields


async def test_customer_gives_feedback_as_itself_only(api: httpx.AsyncClient) -> None:
    token = {"Authorization": f"Bearer {issue_customer_token('cus-self-1', TEST_JWT_SECRET)}"}
    sent = body("nps", score=10)
    del sent["customer_id"]
    answer = await api.post("/v1/me/feedback", json=sent, headers=token)
    assert answer.status_code == 202, answer.text
    mine = (await api.get("/v1/me/feedback", headers=token)).json()
    assert [entry["id"] for entry in mine] == [answer.json()["feedback_id"]]
    assert mine[0]["customer_id"] == "cus-self-1"
    same = await api.post("/v1/me/feedback", json=body("nps", score=10, customer_id="cus-self-1"), headers=token)
    assert same.status_code == 202
    other = await api.post("/v1/me/feedback", json=body("nps", score=10, customer_id="cus-other"), headers=token)
    assert other.status_code == 403
    assert (await api.post("/v1/me/feedback", json=sent)).status_code == 401


async def test_staff_endpoints_need_an_api_key(api: httpx.AsyncClient) -> None:
    token = {"Authorization": f"Bearer {issue_customer_token('cus-self-2', TEST_JWT_SECRET)}"}
    assert (await api.post("/v1/feedback", json=body("nps", score=3), headers=token)).status_code == 401
    assert (await api.get("/v1/reports/nps")).status_code == 401
