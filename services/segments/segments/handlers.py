"""What segments does with each event it consumes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from segments import service
from segments.config import SegmentsSettings
from segments.events import ErasureRequested, ProfileUpdated, PurchaseCompleted, PurchaseRefunded
from shared.consumer import Handler, HandlerMap
from shared.envelope import Envelope


def build_handlers(settings: SegmentsSettings) -> HandlerMap:
    """The handler map; handlers read limits (thresholds, rule size) from the service's settings."""

    async def record_purchase(session: AsyncSession, event: Envelope) -> None:
        purchase = PurchaseCompleted.model_validate(event.data)
        await service.record_purchase(session, purchase=purchase, settings=settings)

    async def record_refund(session: AsyncSession, event: Envelope) -> None:
        refund = PurchaseRefunded.model_validate(event.data)
        await service.record_refund(session, refund=refund, settings=settings)

    async def update_profile_segments(session: AsyncSession, event: Envelope) -> None:
        update = ProfileUpdated.model_validate(event.data)
        await service.record_profile(session, update=update, settings=settings)

    async def erase_customer(session: AsyncSession, event: Envelope) -> None:
        await service.erase_customer(session, request=ErasureRequested.model_validate(event.data))

    handlers: dict[str, list[Handler]] = {
        "purchase.completed": [record_purchase],
        "purchase.refunded": [record_refund],
        "profile.updated": [update_profile_segments],
        "customer.erasure_requested": [erase_customer],
    }
    return handlers
