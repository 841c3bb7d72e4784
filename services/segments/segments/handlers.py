"""What segments does with each event it consumes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from segments import service
from segments.config import SegmentsSettings
from segments.events import ErasureRequested, PurchaseRefunded, parse_profile, parse_purchase
from shared.consumer import BatchHandlerMap, Handler, HandlerMap
from shared.envelope import Envelope


def build_handlers(settings: SegmentsSettings) -> HandlerMap:
    """Per-event handlers; handlers read limits (thresholds, rule size) from the service's settings."""

    async def erase_customer(session: AsyncSession, event: Envelope) -> None:
        await service.erase_customer(session, request=ErasureRequested.model_validate(event.data))

    handlers: dict[str, list[Handler]] = {"customer.erasure_requested": [erase_customer]}
    return handlers


def build_batch_handlers(settings: SegmentsSettings) -> BatchHandlerMap:
    """Purchases, refunds and profiles, a batch at a time: facts in one statement, each customer re-scored once.

    A batch ends in the state its events one by one would leave (the newest profile wins, facts are
    kept once by their ids); membership events describe the state after the batch. A failing event
    makes the consumer retry the batch one event at a time.
    """

    async def record_purchases(session: AsyncSession, events: Sequence[Envelope]) -> None:
        purchases = [parse_purchase(event.data) for event in events]
        await service.record_purchases(session, purchases=purchases, settings=settings)

    async def record_refunds(session: AsyncSession, events: Sequence[Envelope]) -> None:
        refunds = [PurchaseRefunded.model_validate(event.data) for event in events]
        await service.record_refunds(session, refunds=refunds, settings=settings)

    async def update_profile_segments(session: AsyncSession, events: Sequence[Envelope]) -> None:
        updates = [parse_profile(event.data) for event in events]
        await service.record_profiles(session, updates=updates, settings=settings)

    return {
        "purchase.completed": record_purchases,
        "purchase.refunded": record_refunds,
        "profile.updated": update_profile_segments,
    }
