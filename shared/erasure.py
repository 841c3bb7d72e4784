"""Erasure tombstones: an erased customer is remembered only by a hash of their id.

An event from before the erasure can still arrive afterwards (redelivered, reordered, a client
retrying); without the tombstone it would bring the customer's data back. The table is
`erased_customers (customer_hash, requested_at)`; a service's migration creates it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Column, DateTime, MetaData, String, Table, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.consumer import HandlerMap
from shared.envelope import Envelope
from shared.outbox import PUBLISHED
from shared.tables import outbox

erased_customers = Table(
    "erased_customers",
    MetaData(),
    Column("customer_hash", String(64), primary_key=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
)


def customer_hash(customer_id: str) -> str:
    return hashlib.sha256(customer_id.encode()).hexdigest()


async def remember_erasure(session: AsyncSession, *, customer_id: str, requested_at: datetime) -> None:
    """Record the erasure (the latest request wins when a customer is erased more than once)."""
    statement = insert(erased_customers).values(customer_hash=customer_hash(customer_id), requested_at=requested_at)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[erased_customers.c.customer_hash],
            set_={"requested_at": func.greatest(erased_customers.c.requested_at, statement.excluded.requested_at)},
        )
    )


async def erased_at(session: AsyncSession, *, customer_id: str) -> datetime | None:
    """When the customer's latest erasure was requested; None if they never were erased."""
    requested_at: datetime | None = await session.scalar(
        select(erased_customers.c.requested_at).where(erased_customers.c.customer_hash == customer_hash(customer_id))
    )
    return requested_at


async def erasures_of(session: AsyncSession, customer_ids: Iterable[str]) -> dict[str, datetime]:
    """For a batch: when each erased customer among `customer_ids` was last erased (others are absent)."""
    by_hash = {customer_hash(customer_id): customer_id for customer_id in set(customer_ids)}
    if not by_hash:
        return {}
    rows = await session.execute(
        select(erased_customers.c.customer_hash, erased_customers.c.requested_at).where(
            erased_customers.c.customer_hash.in_(list(by_hash))
        )
    )
    return {by_hash[row.customer_hash]: row.requested_at for row in rows}


async def erased_since(session: AsyncSession, *, customer_id: str, occurred_at: datetime) -> bool:
    """Whether the customer was erased at or after `occurred_at`: such an event must not be stored."""
    requested_at = await erased_at(session, customer_id=customer_id)
    return requested_at is not None and occurred_at <= requested_at


async def forget_published_messages(session: AsyncSession, event: Envelope) -> None:
    """On `customer.erased`, delete the published outbox rows keyed by the customer.

    The outbox keeps published rows for a while to publish them again after a broker loss; for an
    erased customer they are copies of personal data. `customer.erased` comes only after every
    service confirmed, so this service's confirmation, its last message naming the customer, is out.
    """
    customer_id = str(event.data.get("customer_id") or event.subject)
    await session.execute(delete(outbox).where(outbox.c.key == customer_id, outbox.c.state == PUBLISHED))


ERASURE_HANDLERS: HandlerMap = {"customer.erased": [forget_published_messages]}
