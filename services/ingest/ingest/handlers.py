"""What ingest does with the events it consumes (besides API key copies, handled in shared)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from ingest.events import ERASURE_CONFIRMED, SOURCE
from ingest.service import erase_customer
from shared.consumer import HandlerMap
from shared.envelope import Envelope, new_event
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import ERASURE_CONFIRMATIONS

SERVICE = "ingest"


class ErasureRequested(BaseModel):
    request_id: str
    customer_id: str
    requested_at: AwareDatetime


class ErasureConfirmed(BaseModel):
    request_id: str
    customer_id: str
    service: str
    confirmed_at: AwareDatetime


async def erase_customer_data(session: AsyncSession, event: Envelope) -> None:
    request = ErasureRequested.model_validate(event.data)
    await erase_customer(session, customer_id=request.customer_id)
    confirmed = ErasureConfirmed(
        request_id=request.request_id,
        customer_id=request.customer_id,
        service=SERVICE,
        confirmed_at=datetime.now(UTC),
    )
    envelope = new_event(type=ERASURE_CONFIRMED, source=SOURCE, subject=request.customer_id, data=confirmed)
    await add_to_outbox(session, [OutgoingMessage(ERASURE_CONFIRMATIONS[SERVICE], request.customer_id, envelope)])


HANDLERS: HandlerMap = {"customer.erasure_requested": [erase_customer_data]}
