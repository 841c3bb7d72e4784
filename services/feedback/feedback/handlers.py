"""What feedback does with each event it consumes."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from feedback import service
from feedback.events import ErasureRequested, SegmentChanged
from shared.consumer import HandlerMap
from shared.envelope import Envelope


async def _apply_segment_change(session: AsyncSession, event: Envelope, *, is_member: bool) -> None:
    change = SegmentChanged.model_validate(event.data)
    await service.apply_membership(
        session,
        customer_id=change.customer_id,
        segment_key=change.segment_key,
        segment_id=change.segment_id,
        is_member=is_member,
        changed_at=change.occurred_at,
    )


async def record_segment_entry(session: AsyncSession, event: Envelope) -> None:
    await _apply_segment_change(session, event, is_member=True)


async def record_segment_exit(session: AsyncSession, event: Envelope) -> None:
    await _apply_segment_change(session, event, is_member=False)


async def erase_customer_data(session: AsyncSession, event: Envelope) -> None:
    request = ErasureRequested.model_validate(event.data)
    await service.erase_customer(
        session,
        request_id=request.request_id,
        customer_id=request.customer_id,
        requested_at=request.requested_at,
        now=datetime.now(UTC),
    )


HANDLERS: HandlerMap = {
    "segment.entered": [record_segment_entry],
    "segment.exited": [record_segment_exit],
    "customer.erasure_requested": [erase_customer_data],
}
