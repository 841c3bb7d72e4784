"""Erasure (right to be forgotten): profiles records the request, forgets its own share, and
announces `customer.erased` once every service has confirmed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.events import (
    CustomerErased,
    ErasureConfirmed,
    ErasureRequested,
    customer_erased,
    erasure_confirmed,
    erasure_requested,
)
from profiles.models import (
    Affinity,
    Customer,
    CustomerRevenue,
    CustomerTrait,
    ErasedCustomer,
    ErasureConfirmation,
    ErasureRequest,
    Feedback,
    IdentityLink,
    Interaction,
    Order,
    OrderLine,
    Refund,
    SegmentMembership,
)
from profiles.service import customer_key, forget_in_session
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import ERASURE_CONFIRMATIONS, PRIVACY_ERASURES, PROFILES

SERVICES = tuple(sorted(ERASURE_CONFIRMATIONS))
# Facts kept for anonymous aggregates (revenue, co-occurrence), moved to an unlinkable pseudonym.
PSEUDONYMISED = (Order, OrderLine, Refund, Feedback, Affinity, CustomerRevenue)
# Facts that describe the person: deleted.
DELETED = (CustomerTrait, IdentityLink, SegmentMembership, Customer)


async def request_erasure(session: AsyncSession, *, customer_id: str, now: datetime) -> ErasureRequest:
    """Record an erasure request and publish it; a request already pending for the customer is reused."""
    pending = (
        await session.execute(
            select(ErasureRequest)
            .where(ErasureRequest.customer_key == customer_key(customer_id))
            .where(ErasureRequest.status == "pending")
        )
    ).scalar_one_or_none()
    if pending is not None:
        return pending
    request = ErasureRequest(
        request_id=str(uuid.uuid4()),
        customer_id=customer_id,
        customer_key=customer_key(customer_id),
        requested_at=now,
        status="pending",
    )
    session.add(request)
    await session.flush()
    event = erasure_requested(
        ErasureRequested(request_id=request.request_id, customer_id=customer_id, requested_at=now)
    )
    await add_to_outbox(session, [OutgoingMessage(PRIVACY_ERASURES, customer_id, event)])
    return request


async def erase_customer(session: AsyncSession, *, request: ErasureRequested, now: datetime) -> None:
    """Forget the person (traits, links, the profile) and keep the anonymous facts under a pseudonym."""
    customer_id = request.customer_id
    pseudonym = f"erased-{uuid.uuid4().hex}"
    for model in PSEUDONYMISED:
        await session.execute(
            update(model)
            .where(model.customer_id == customer_id)
            .values(customer_id=pseudonym)
            .execution_options(synchronize_session=False)
        )
    await session.execute(
        update(Interaction)
        .where(Interaction.customer_id == customer_id)
        .values(customer_id=pseudonym, anonymous_id=None)
        .execution_options(synchronize_session=False)
    )
    for gone in DELETED:
        await session.execute(
            delete(gone).where(gone.customer_id == customer_id).execution_options(synchronize_session=False)
        )
    await session.execute(
        insert(ErasedCustomer).values(customer_key=customer_key(customer_id), erased_at=now).on_conflict_do_nothing()
    )
    forget_in_session(session, customer_id)
    await _forget_outbox_copies(session, customer_id)
    confirmation = ErasureConfirmed(
        request_id=request.request_id, customer_id=customer_id, service="profiles", confirmed_at=now
    )
    await add_to_outbox(
        session, [OutgoingMessage(ERASURE_CONFIRMATIONS["profiles"], customer_id, erasure_confirmed(confirmation))]
    )


async def record_confirmation(session: AsyncSession, *, confirmation: ErasureConfirmed, now: datetime) -> bool:
    """Count a service's confirmation; publishes customer.erased when the last one arrives (returns True)."""
    if confirmation.service not in SERVICES:
        raise ValueError(f"unknown service {confirmation.service!r}")
    await session.execute(
        insert(ErasureConfirmation)
        .values(
            request_id=confirmation.request_id, service=confirmation.service, confirmed_at=confirmation.confirmed_at
        )
        .on_conflict_do_nothing()
    )
    request = (
        await session.execute(
            select(ErasureRequest).where(ErasureRequest.request_id == confirmation.request_id).with_for_update()
        )
    ).scalar_one_or_none()
    if request is None or request.status != "pending" or request.customer_id is None:
        return False
    confirmed = await _confirmed_services(session, request.request_id)
    if set(confirmed) != set(SERVICES):
        return False
    erased = CustomerErased(
        request_id=request.request_id, customer_id=request.customer_id, erased_at=now, services=list(SERVICES)
    )
    await add_to_outbox(session, [OutgoingMessage(PRIVACY_ERASURES, request.customer_id, customer_erased(erased))])
    await _forget_outbox_copies(session, request.customer_id)
    request.status, request.completed_at, request.customer_id = "completed", now, None
    await session.flush()
    return True


async def _forget_outbox_copies(session: AsyncSession, customer_id: str) -> None:
    """Delete the retained (published) outbox rows keyed by the customer, and any profile.updated not yet
    sent: they name the customer. Rows still pending on other topics (the confirmation) go out first."""
    await session.execute(
        text("delete from outbox where key = :key and (state = 'published' or topic = :profiles)"),
        {"key": customer_id, "profiles": PROFILES},
    )


async def _confirmed_services(session: AsyncSession, request_id: str) -> dict[str, datetime]:
    rows = await session.execute(
        select(ErasureConfirmation.service, ErasureConfirmation.confirmed_at).where(
            ErasureConfirmation.request_id == request_id
        )
    )
    return {service: confirmed_at for service, confirmed_at in rows}


async def erasure_status(session: AsyncSession, *, request_id: str) -> dict[str, Any] | None:
    request = await session.get(ErasureRequest, request_id)
    if request is None:
        return None
    confirmed = await _confirmed_services(session, request_id)
    return {
        "request_id": request.request_id,
        "status": request.status,
        "requested_at": request.requested_at,
        "completed_at": request.completed_at,
        "confirmed": [{"service": s, "confirmed_at": confirmed[s]} for s in sorted(confirmed)],
        "waiting_for": [s for s in SERVICES if s not in confirmed],
    }
