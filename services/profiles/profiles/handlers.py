"""What profiles does with each event it consumes.

The profile-building events go through set-based batch handlers (batch.py): a fetched batch of
one type at a time. Erasure events are rare and applied one by one.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from profiles import erasure
from profiles.batch import BATCH_HANDLERS
from profiles.events import ErasureConfirmed, ErasureRequested
from profiles.service import utcnow
from shared.consumer import HandlerMap
from shared.envelope import Envelope


async def erase_profile(session: AsyncSession, event: Envelope) -> None:
    await erasure.erase_customer(session, request=ErasureRequested.model_validate(event.data), now=utcnow())


async def count_erasure_confirmation(session: AsyncSession, event: Envelope) -> None:
    confirmation = ErasureConfirmed.model_validate(event.data)
    await erasure.record_confirmation(session, confirmation=confirmation, now=utcnow())


HANDLERS: HandlerMap = {
    "customer.erasure_requested": [erase_profile],
    "erasure.confirmed": [count_erasure_confirmation],
}

__all__ = ["BATCH_HANDLERS", "HANDLERS"]
