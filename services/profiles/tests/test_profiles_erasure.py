"""Erasure in profiles: personal data goes, anonymous aggregates stay, customer.erased after all five confirm."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from profiles import erasure
from profiles.config import ProfilesSettings
from profiles.portrait import publish_all_changes
from profiles.testing import Events
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.envelope import Envelope, new_event
from shared.erasure import forget_published_messages
from shared.testing import TestPlatform, rollback_session
from shared.topics import ERASURE_CONFIRMATIONS, PRIVACY_ERASURES

SETTINGS = ProfilesSettings(consumers_enabled=False)
# Every profiles table that names a customer (the platform tables hold no customer data of profiles').
CUSTOMER_TABLES = (
    "customers",
    "customer_revenue",
    "customer_traits",
    "orders",
    "order_lines",
    "refunds",
    "interactions",
    "identity_links",
    "affinities",
    "feedback",
    "segment_memberships",
)


@pytest.fixture
async def session(platform: TestPlatform) -> AsyncIterator[AsyncSession]:
    async with rollback_session(platform.engine("profiles")) as session:
        yield session


async def outbox(session: AsyncSession, topic: str) -> list[dict[str, Any]]:
    rows = await session.execute(text("select payload from outbox where topic = :t order by id"), {"t": topic})
    return [orjson.loads(p) for p in rows.scalars()]


async def rows_naming(session: AsyncSession, value: str) -> dict[str, int]:
    """Rows of any customer table whose text contains `value` (id, e-mail, anonymous id...)."""
    found = {}
    for table in CUSTOMER_TABLES:
        count = await session.scalar(text(f"select count(*) from {table} t where t::text like :v"), {"v": f"%{value}%"})
        if count:
            found[table] = int(count)
    return found


def confirmation(request_id: str, customer_id: str, service: str) -> Envelope:
    data = {"request_id": request_id, "customer_id": customer_id, "service": service, "confirmed_at": _now()}
    return new_event(type="erasure.confirmed", source=f"cx.{service}", subject=customer_id, data=data)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def test_erasure_forgets_the_person_and_keeps_anonymous_totals(session: AsyncSession) -> None:
    events = Events(f"cus-{uuid.uuid4().hex[:12]}")
    anonymous_id = f"anon-{uuid.uuid4().hex}"
    await events.apply(
        session,
        events.interaction("x-1", "product_view", days_ago=3, anonymous_id=anonymous_id, sku="TEA"),
        events.identify(
            "x-2", days_ago=2, traits={"email": "forget@example.com", "name": "Zed"}, anonymous_id=anonymous_id
        ),
        events.purchase("x-3", days_ago=1, items=[("TEA", "tea", 1, "5.00")]),
        events.feedback("x-4", "nps", 3, days_ago=1),
        events.segment("segment.entered", "tea", days_ago=1),
    )
    revenue_before = await session.scalar(text("select sum(total) from orders"))
    request = await erasure.request_erasure(session, customer_id=events.customer_id, now=datetime.now(UTC))
    (requested,) = [m for m in await outbox(session, PRIVACY_ERASURES) if m["data"]["request_id"] == request.request_id]
    await events.apply(session, Envelope.model_validate(requested))

    for value in (events.customer_id, "forget@example.com", "Zed", anonymous_id):
        assert await rows_naming(session, value) == {}, value
    assert await session.scalar(text("select sum(total) from orders")) == revenue_before
    confirmations = await outbox(session, ERASURE_CONFIRMATIONS["profiles"])
    assert [c["data"]["request_id"] for c in confirmations if c["data"]["request_id"] == request.request_id] == [
        request.request_id
    ]
    # Late events about the erased customer are ignored rather than starting a new profile.
    await events.apply(session, events.purchase("x-5", days_ago=0, items=[("TEA", "tea", 1, "5.00")]))
    await events.apply(session, events.identify("x-6", days_ago=0, traits={"email": "forget@example.com"}))
    assert await rows_naming(session, events.customer_id) == {}


async def test_customer_erased_follows_the_fifth_confirmation_once(session: AsyncSession) -> None:
    customer_id = f"cus-{uuid.uuid4().hex[:12]}"
    request = await erasure.request_erasure(session, customer_id=customer_id, now=datetime.now(UTC))
    services = sorted(ERASURE_CONFIRMATIONS)

    async def erased() -> list[dict[str, Any]]:
        return [m for m in await outbox(session, PRIVACY_ERASURES) if m["type"] == "customer.erased"]

    for service in services[:-1]:
        await Events.apply(session, confirmation(request.request_id, customer_id, service))
        await Events.apply(session, confirmation(request.request_id, customer_id, service))
    assert [m for m in await erased() if m["data"]["request_id"] == request.request_id] == []
    status = await erasure.erasure_status(session, request_id=request.request_id)
    assert status is not None and status["waiting_for"] == services[-1:]

    for _ in range(2):
        await Events.apply(session, confirmation(request.request_id, customer_id, services[-1]))
    mine = [m for m in await erased() if m["data"]["request_id"] == request.request_id]
    assert len(mine) == 1
    assert mine[0]["data"]["customer_id"] == customer_id and mine[0]["data"]["services"] == services
    status = await erasure.erasure_status(session, request_id=request.request_id)
    assert status is not None and status["status"] == "completed" and status["waiting_for"] == []
    held = await session.scalar(
        text("select count(*) from erasure_requests where customer_id = :c"), {"c": customer_id}
    )
    assert held == 0  # once done, the request no longer names the customer


async def test_a_confirmation_from_an_unknown_service_is_refused(session: AsyncSession) -> None:
    with pytest.raises(ValueError):
        await Events.apply(session, confirmation("req-1", "cus-1", "marketing"))


async def test_once_customer_erased_is_published_profiles_outbox_no_longer_names_the_customer(
    session: AsyncSession,
) -> None:
    events = Events(f"cus-{uuid.uuid4().hex[:12]}")
    await events.apply(session, events.purchase("y-1", days_ago=1, items=[("TEA", "tea", 1, "5.00")]))
    await publish_all_changes(session, settings=SETTINGS, now=Events.now)
    request = await erasure.request_erasure(session, customer_id=events.customer_id, now=datetime.now(UTC))
    (requested,) = [m for m in await outbox(session, PRIVACY_ERASURES) if m["data"]["request_id"] == request.request_id]

    async def relay_sends_everything() -> int:
        sent = await session.execute(
            text("update outbox set state = 'published' where key = :k and state = 'pending'"),
            {"k": events.customer_id},
        )
        return int(sent.rowcount)  # type: ignore[attr-defined]

    async def naming() -> int:
        found = await session.scalar(text("select count(*) from outbox where key = :k"), {"k": events.customer_id})
        return int(found or 0)

    assert await relay_sends_everything() == 2  # profile.updated, customer.erasure_requested
    await events.apply(session, Envelope.model_validate(requested))
    assert await naming() == 1  # only profiles' own confirmation, still to send
    await relay_sends_everything()
    for service in sorted(ERASURE_CONFIRMATIONS):
        await Events.apply(session, confirmation(request.request_id, events.customer_id, service))
    assert await naming() == 1  # customer.erased, still to send
    await relay_sends_everything()
    (erased,) = [m for m in await outbox(session, PRIVACY_ERASURES) if m["type"] == "customer.erased"
                 and m["data"]["request_id"] == request.request_id]  # fmt: skip
    await forget_published_messages(session, Envelope.model_validate(erased))  # every service, on customer.erased
    assert await naming() == 0
