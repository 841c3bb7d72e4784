"""Ingest's one operation: accept an event once per (source, event_id) and queue it for publishing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ingest.models import IngestedEvent
from shared.envelope import Envelope
from shared.outbox import OutgoingMessage, add_to_outbox


@dataclass(frozen=True)
class IncomingEvent:
    source: str
    event_id: str
    kind: str
    customer_key: str
    occurred_at: datetime
    topic: str
    envelope: Envelope


async def accept_event(session: AsyncSession, *, event: IncomingEvent, max_message_bytes: int) -> bool:
    """Store and queue the event; False when this source already sent this event_id.

    ON CONFLICT makes two simultaneous posts of one event accept it exactly once.
    """
    inserted = await session.execute(
        insert(IngestedEvent)
        .values(
            source=event.source,
            event_id=event.event_id,
            kind=event.kind,
            customer_key=event.customer_key,
            envelope_id=event.envelope.id,
            occurred_at=event.occurred_at,
            payload=event.envelope.data,
        )
        .on_conflict_do_nothing(constraint="ingested_events_source_event_id")
        .returning(IngestedEvent.id)
    )
    if inserted.first() is None:
        return False
    await add_to_outbox(
        session,
        [OutgoingMessage(event.topic, event.customer_key, event.envelope)],
        max_message_bytes=max_message_bytes,
    )
    return True
