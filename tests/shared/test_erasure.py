"""Erasure tombstones and the outbox copies forgotten on customer.erased (shared/erasure.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from shared.envelope import new_event
from shared.erasure import customer_hash, erased_customers, erased_since, forget_published_messages, remember_erasure
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.tables import outbox
from shared.testing import TestPlatform, rollback_session

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


async def test_an_erasure_is_remembered_by_hash_and_drops_only_what_happened_before_it(
    platform: TestPlatform,
) -> None:
    customer = f"cus-{uuid.uuid4().hex[:10]}"
    async with rollback_session(platform.engine("feedback")) as session:
        assert not await erased_since(session, customer_id=customer, occurred_at=AT)
        await remember_erasure(session, customer_id=customer, requested_at=AT)
        await remember_erasure(session, customer_id=customer, requested_at=AT - timedelta(days=1))  # older: ignored
        stored = (await session.execute(select(erased_customers))).all()
        assert (customer_hash(customer), AT) in [tuple(row) for row in stored]
        assert customer not in str(stored)
        assert await erased_since(session, customer_id=customer, occurred_at=AT - timedelta(seconds=1))
        assert await erased_since(session, customer_id=customer, occurred_at=AT)
        assert not await erased_since(session, customer_id=customer, occurred_at=AT + timedelta(seconds=1))


async def test_customer_erased_deletes_the_published_outbox_rows_keyed_by_the_customer(
    platform: TestPlatform,
) -> None:
    customer, other = f"cus-{uuid.uuid4().hex[:10]}", f"cus-{uuid.uuid4().hex[:10]}"

    def message(key: str) -> OutgoingMessage:
        event = new_event(type="thing.done", source="test", subject=key, data={})
        return OutgoingMessage("test.erasure.v1", key, event)

    async with rollback_session(platform.engine("feedback")) as session:
        await add_to_outbox(session, [message(customer), message(customer), message(other)])
        await session.execute(update(outbox).where(outbox.c.key.in_([customer, other])).values(state="published"))
        await add_to_outbox(session, [message(customer)])  # not yet published: kept for the relay
        data = {"customer_id": customer}
        erased = new_event(type="customer.erased", source="cx.profiles", subject=customer, data=data)
        await forget_published_messages(session, erased)
        left = (
            await session.execute(select(outbox.c.key, outbox.c.state).where(outbox.c.key.in_([customer, other])))
        ).all()
        assert sorted(tuple(row) for row in left) == sorted([(customer, "pending"), (other, "published")])
