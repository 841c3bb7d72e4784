"""What profiles does with each event it consumes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from profiles import erasure, service
from profiles.events import (
    CustomerIdentified,
    ErasureConfirmed,
    ErasureRequested,
    FeedbackSubmitted,
    InteractionRecorded,
    PointsChanged,
    PurchaseCompleted,
    PurchaseRefunded,
    SegmentMembershipChanged,
    TierChanged,
)
from shared.consumer import HandlerMap
from shared.envelope import Envelope


async def count_purchase(session: AsyncSession, event: Envelope) -> None:
    await service.record_purchase(session, purchase=PurchaseCompleted.model_validate(event.data))


async def deduct_refund(session: AsyncSession, event: Envelope) -> None:
    await service.record_refund(session, refund=PurchaseRefunded.model_validate(event.data))


async def count_interaction(session: AsyncSession, event: Envelope) -> None:
    await service.record_interaction(session, interaction=InteractionRecorded.model_validate(event.data))


async def merge_identity(session: AsyncSession, event: Envelope) -> None:
    await service.identify_customer(session, identified=CustomerIdentified.model_validate(event.data))


async def track_points_balance(session: AsyncSession, event: Envelope) -> None:
    await service.record_points_balance(session, change=PointsChanged.model_validate(event.data))


async def track_tier(session: AsyncSession, event: Envelope) -> None:
    await service.record_tier(session, change=TierChanged.model_validate(event.data))


async def record_satisfaction(session: AsyncSession, event: Envelope) -> None:
    await service.record_feedback(session, feedback=FeedbackSubmitted.model_validate(event.data))


async def join_segment(session: AsyncSession, event: Envelope) -> None:
    change = SegmentMembershipChanged.model_validate(event.data)
    await service.record_segment_membership(session, change=change, member=True)


async def leave_segment(session: AsyncSession, event: Envelope) -> None:
    change = SegmentMembershipChanged.model_validate(event.data)
    await service.record_segment_membership(session, change=change, member=False)


async def erase_profile(session: AsyncSession, event: Envelope) -> None:
    await erasure.erase_customer(session, request=ErasureRequested.model_validate(event.data), now=service.utcnow())


async def count_erasure_confirmation(session: AsyncSession, event: Envelope) -> None:
    confirmation = ErasureConfirmed.model_validate(event.data)
    await erasure.record_confirmation(session, confirmation=confirmation, now=service.utcnow())


HANDLERS: HandlerMap = {
    "purchase.completed": [count_purchase],
    "purchase.refunded": [deduct_refund],
    "interaction.recorded": [count_interaction],
    "customer.identified": [merge_identity],
    "points.earned": [track_points_balance],
    "points.redeemed": [track_points_balance],
    "points.reversed": [track_points_balance],
    "points.expired": [track_points_balance],
    "tier.changed": [track_tier],
    "feedback.submitted": [record_satisfaction],
    "segment.entered": [join_segment],
    "segment.exited": [leave_segment],
    "customer.erasure_requested": [erase_profile],
    "erasure.confirmed": [count_erasure_confirmation],
}
