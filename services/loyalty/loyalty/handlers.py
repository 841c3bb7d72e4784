"""What loyalty does with each event it consumes.

`handlers_for(program)` binds the rules file (used until rules are stored in the database);
`HANDLERS` is the map without a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from loyalty import service
from loyalty.events import (
    CustomerIdentified,
    ErasureRequested,
    FeedbackSubmitted,
    PurchaseCompleted,
    PurchaseRefunded,
    SegmentMembershipChanged,
)
from loyalty.rules import ProgramFile, current_rules
from shared.consumer import HandlerMap
from shared.envelope import Envelope
from shared.erasure import erasures_of


async def _erased(session: AsyncSession, customer_id: str, occurred_at: datetime | None) -> bool:
    return await service.erased_before(session, customer_id=customer_id, occurred_at=occurred_at)


async def credit_purchase(session: AsyncSession, event: Envelope, *, program: ProgramFile | None = None) -> None:
    purchase = PurchaseCompleted.model_validate(event.data)
    if await _erased(session, purchase.customer_id, purchase.occurred_at):
        return
    await service.credit_purchase(session, purchase=purchase, program=program)


async def reverse_refund(session: AsyncSession, event: Envelope) -> None:
    refund = PurchaseRefunded.model_validate(event.data)
    if not await _erased(session, refund.customer_id, refund.occurred_at):
        await service.record_refund(session, refund=refund)


async def enroll_identified_customer(session: AsyncSession, event: Envelope) -> None:
    identified = CustomerIdentified.model_validate(event.data)
    if not await _erased(session, identified.customer_id, identified.occurred_at or event.time):
        await service.enroll(session, customer_id=identified.customer_id)


async def credit_segment_entry(session: AsyncSession, event: Envelope, *, program: ProgramFile | None = None) -> None:
    await record_segment_changes(session, [event], member=True, program=program)


async def record_segment_exit(session: AsyncSession, event: Envelope) -> None:
    await record_segment_changes(session, [event], member=False)


async def record_segment_changes(
    session: AsyncSession, events: Sequence[Envelope], *, member: bool, program: ProgramFile | None = None
) -> None:
    """Update loyalty's copy of the memberships of a batch, then credit the entries that earn a bonus.

    A change from before the customer's erasure is dropped; an exit after it deletes the row
    (segments announces the exits an erasure causes, and a row recording one would name them again).
    """
    changes = [SegmentMembershipChanged.model_validate(event.data) for event in events]
    erasures = await erasures_of(session, (change.customer_id for change in changes))
    kept: list[SegmentMembershipChanged] = []
    forget: set[tuple[str, str]] = set()
    for change in changes:
        erased = erasures.get(change.customer_id)
        if erased is not None and change.occurred_at <= erased:
            continue
        if erased is not None and not member:
            forget.add((change.customer_id, change.segment_key))
            continue
        kept.append(change)
    await service.forget_segment_memberships(session, pairs=forget)
    await service.record_segment_changes(
        session, changes=[(c.customer_id, c.segment_key, member, c.occurred_at) for c in kept]
    )
    if not member or not kept:
        return
    rules, _ = await current_rules(session, fallback=program.rules() if program else None)
    for change in kept:
        if rules.segment_bonuses.get(change.segment_key, 0) > 0:
            await service.credit_segment_bonus(
                session,
                customer_id=change.customer_id,
                segment_key=change.segment_key,
                occurred_at=change.occurred_at,
                rules=rules,
            )


async def credit_feedback(session: AsyncSession, event: Envelope, *, program: ProgramFile | None = None) -> None:
    feedback = FeedbackSubmitted.model_validate(event.data)
    if not feedback.order_id or await _erased(session, feedback.customer_id, feedback.occurred_at):
        return  # Only feedback on an order earns; none for an erased customer.
    rules, _ = await current_rules(session, fallback=program.rules() if program else None)
    await service.credit_feedback(
        session,
        customer_id=feedback.customer_id,
        order_id=feedback.order_id,
        occurred_at=feedback.occurred_at,
        rules=rules,
    )


async def erase_member(session: AsyncSession, event: Envelope) -> None:
    request = ErasureRequested.model_validate(event.data)
    await service.erase_member(
        session,
        customer_id=request.customer_id,
        request_id=request.request_id,
        requested_at=request.requested_at or event.time,
    )


def handlers_for(program: ProgramFile | None) -> HandlerMap:
    return {
        "purchase.completed": [partial(credit_purchase, program=program)],
        "purchase.refunded": [reverse_refund],
        "customer.identified": [enroll_identified_customer],
        "segment.entered": [partial(credit_segment_entry, program=program)],
        "segment.exited": [record_segment_exit],
        "feedback.submitted": [partial(credit_feedback, program=program)],
        "customer.erasure_requested": [erase_member],
    }


HANDLERS: HandlerMap = handlers_for(None)
