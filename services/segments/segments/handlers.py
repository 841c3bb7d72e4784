"""What segments does with each event it consumes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from segments import service
from segments.config import SegmentsSettings
from segments.events import ErasureRequested, ProfileUpdated, PurchaseCompleted, PurchaseRefunded
from shared.consumer import BatchHandlerMap, Handler, HandlerMap
from shared.envelope import Envelope


def build_handlers(settings: SegmentsSettings) -> HandlerMap:
    """Per-event handlers; handlers read limits (thresholds, rule size) from the service's settings."""

    async def erase_customer(session: AsyncSession, event: Envelope) -> None:
        await service.erase_customer(session, request=ErasureRequested.model_validate(event.data))

    handlers: dict[str, list[Handler]] = {"customer.erasure_requested": [erase_customer]}
    return handlers


def build_batch_handlers(settings: SegmentsSettings) -> BatchHandlerMap:
    """Purchases, refunds and profiles: each event applied as alone, in order, sharing one BatchContext.

    The per-customer work is exactly the one-event path; what the batch shares is only what it reads
    alike (the base lock, active segments, cut-points, models), so a batch ends in the same state as
    its events one by one. A failing event makes the consumer retry the batch one event at a time.
    """

    async def record_purchases(session: AsyncSession, events: Sequence[Envelope]) -> None:
        context = service.BatchContext()
        for event in events:
            purchase = PurchaseCompleted.model_validate(event.data)
            await service.record_purchase(session, purchase=purchase, settings=settings, context=context)

    async def record_refunds(session: AsyncSession, events: Sequence[Envelope]) -> None:
        context = service.BatchContext()
        for event in events:
            refund = PurchaseRefunded.model_validate(event.data)
            await service.record_refund(session, refund=refund, settings=settings, context=context)

    async def update_profile_segments(session: AsyncSession, events: Sequence[Envelope]) -> None:
        context = service.BatchContext()
        for event in events:
            update = ProfileUpdated.model_validate(event.data)
            await service.record_profile(session, update=update, settings=settings, context=context)

    return {
        "purchase.completed": record_purchases,
        "purchase.refunded": record_refunds,
        "profile.updated": update_profile_segments,
    }
