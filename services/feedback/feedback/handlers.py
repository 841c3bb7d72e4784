"""What feedback does with each event it consumes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from feedback import service
from feedback.events import ErasureRequested, SegmentChanged
from shared.consumer import BatchHandlerMap, HandlerMap
from shared.envelope import Envelope


async def _apply_segment_changes(session: AsyncSession, events: Sequence[Envelope], *, is_member: bool) -> None:
    changes = []
    for event in events:
        data = SegmentChanged.model_validate(event.data)
        changes.append(
            service.MembershipChange(data.customer_id, data.segment_key, data.segment_id, is_member, data.occurred_at)
        )
    await service.apply_memberships(session, changes=changes)


async def record_segment_entries(session: AsyncSession, events: Sequence[Envelope]) -> None:
    await _apply_segment_changes(session, events, is_member=True)


async def record_segment_exits(session: AsyncSession, events: Sequence[Envelope]) -> None:
    await _apply_segment_changes(session, events, is_member=False)


async def erase_customer_data(session: AsyncSession, event: Envelope) -> None:
    request = ErasureRequested.model_validate(event.data)
    await service.erase_customer(
        session,
        request_id=request.request_id,
        customer_id=request.customer_id,
        requested_at=request.requested_at,
        now=datetime.now(UTC),
    )


HANDLERS: HandlerMap = {"customer.erasure_requested": [erase_customer_data]}
# A batch of memberships at a time (by event time, so grouping them by type changes nothing).
BATCH_HANDLERS: BatchHandlerMap = {"segment.entered": record_segment_entries, "segment.exited": record_segment_exits}
