"""Accept events once per (source, event_id), store them and queue them for publishing.

One code path for a single event and a batch: validate each event on its own, price refunds
against their orders, then write every good event with one set-based statement that also
fills the outbox. A bad event is reported, never sinks the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from ingest import events
from ingest.checks import check_event
from ingest.events import PreparedEvent
from ingest.models import ApiKeySource, IngestedEvent
from ingest.orders import OrderBook
from ingest.schemas import (
    IDENTIFIER,
    MODEL_BY_KIND,
    EventModel,
    IdentifyIn,
    InteractionIn,
    Limits,
    PurchaseIn,
    RefundIn,
)
from shared.errors import FieldError

Status = Literal["accepted", "duplicate", "rejected"]

# The batch travels as one JSON document (orjson builds it in C; asyncpg would encode arrays
# element by element in Python). Data and envelopes are embedded verbatim, never re-encoded.
_STORE_EVENTS = text(
    """
    WITH incoming AS (
        SELECT * FROM json_to_recordset(CAST(:events AS json)) AS t(
            position int, event_id text, kind text, customer_key text, order_id text, envelope_id text,
            occurred_at timestamptz, topic text, payload jsonb, message text)
    ), inserted AS (
        INSERT INTO ingested_events (source, event_id, kind, customer_key, order_id, envelope_id, occurred_at, payload)
        SELECT CAST(:source AS text), event_id, kind, customer_key, order_id, envelope_id, occurred_at, payload
        FROM incoming ORDER BY position
        ON CONFLICT ON CONSTRAINT ingested_events_source_event_id DO NOTHING
        RETURNING envelope_id
    ), queued AS (
        INSERT INTO outbox (event_id, topic, key, payload)
        SELECT i.envelope_id, i.topic, i.customer_key, i.message
        FROM incoming i JOIN inserted USING (envelope_id) ORDER BY i.position
    )
    SELECT envelope_id FROM inserted
    """
)


@dataclass
class EventResult:
    index: int
    event_id: str | None
    status: Status = "rejected"
    id: str | None = None
    errors: list[FieldError] = field(default_factory=list)


@dataclass
class _Checked:
    result: EventResult
    model: EventModel


async def ingest_events(
    session: AsyncSession,
    *,
    source: str,
    events_in: Sequence[tuple[str | None, object]],
    limits: Limits,
    max_message_bytes: int,
) -> list[EventResult]:
    """Each (kind, raw event) accepted, found a duplicate, or rejected with its errors."""
    results: list[EventResult] = []
    checked: list[_Checked] = []
    for index, (kind, raw) in enumerate(events_in):
        result = EventResult(index, _event_id_of(raw))
        results.append(result)
        if not isinstance(kind, str) or kind not in MODEL_BY_KIND:
            message = "must be one of purchase, refund, interaction, identify"
            result.errors = [FieldError(field="kind", message=message, type="literal_error")]
            continue
        model, result.errors = check_event(kind, raw, limits)
        if model is not None:
            checked.append(_Checked(result, model))
    # A repeat answers "duplicate" whatever its body: a refund is not priced against its own first
    # copy, and a rejected body whose event_id was accepted before is not an error.
    refund_ids = [c.model.event_id for c in checked if isinstance(c.model, RefundIn)]
    rejected = [r for r in results if r.errors and r.event_id]
    known = await _known_event_ids(session, source=source, event_ids=refund_ids + [r.event_id or "" for r in rejected])
    for result in rejected:
        if result.event_id in known:
            result.status, result.id, result.errors = "duplicate", known[result.event_id], []
    prepared = await _prepare_all(session, checked=checked, known=known)
    storable = [(c, p) for c, p in prepared if _fits(c.result, p, max_message_bytes)]
    await _store(session, source=source, prepared=storable)
    return results


def _event_id_of(raw: object) -> str | None:
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return event_id if isinstance(event_id, str) and IDENTIFIER.fullmatch(event_id) else None


def _fits(result: EventResult, event: PreparedEvent, max_message_bytes: int) -> bool:
    size = len(event.message) + len(event.customer_key.encode())
    if size > max_message_bytes:
        result.errors = [FieldError(field="body", message=f"the event is {size} bytes, over {max_message_bytes}")]
        return False
    return True


async def _prepare_all(
    session: AsyncSession, *, checked: list[_Checked], known: dict[str, str]
) -> list[tuple[_Checked, PreparedEvent]]:
    refunds = [c.model for c in checked if isinstance(c.model, RefundIn) and c.model.event_id not in known]
    book = await OrderBook.load(session, [r.order_id for r in refunds])
    prepared: list[tuple[_Checked, PreparedEvent]] = []
    for item in checked:
        model = item.model
        if isinstance(model, PurchaseIn):
            event = events.purchase_completed(model)
            if refunds:
                book.add_purchase(model, model.total if model.total is not None else model.items_total())
        elif isinstance(model, RefundIn):
            if model.event_id in known:
                item.result.status, item.result.id = "duplicate", known[model.event_id]
                continue
            amount, priced, errors = book.refund(model)
            if errors:
                item.result.errors = errors
                continue
            event = events.purchase_refunded(model, amount=amount, items=priced)
        elif isinstance(model, InteractionIn):
            event = events.interaction_recorded(model)
        else:
            assert isinstance(model, IdentifyIn)
            event = events.customer_identified(model)
        prepared.append((item, event))
    return prepared


async def _known_event_ids(session: AsyncSession, *, source: str, event_ids: list[str]) -> dict[str, str]:
    """event_id -> the original event's envelope id, for those this source already sent."""
    if not event_ids:
        return {}
    rows = await session.execute(
        select(IngestedEvent.event_id, IngestedEvent.envelope_id)
        .where(IngestedEvent.source == source)
        .where(IngestedEvent.event_id.in_(event_ids))
    )
    return {event_id: envelope_id for event_id, envelope_id in rows.all()}


async def _store(session: AsyncSession, *, source: str, prepared: list[tuple[_Checked, PreparedEvent]]) -> None:
    """One statement stores the new events and queues them; ON CONFLICT makes concurrent repeats a no-op."""
    if not prepared:
        return
    document = orjson.dumps(
        [
            {
                "position": position,
                "event_id": p.event_id,
                "kind": p.kind,
                "customer_key": p.customer_key,
                "order_id": p.order_id,
                "envelope_id": p.envelope_id,
                "occurred_at": p.occurred_at,
                "topic": p.topic,
                "payload": orjson.Fragment(p.payload),
                "message": orjson.Fragment(p.message),
            }
            for position, (_, p) in enumerate(prepared)
        ]
    )
    inserted = await session.execute(_STORE_EVENTS, {"source": source, "events": document.decode()})
    accepted = set(inserted.scalars().all())
    repeated = [c.result.event_id or "" for c, p in prepared if p.envelope_id not in accepted]
    originals = await _known_event_ids(session, source=source, event_ids=repeated)
    for checked, event in prepared:
        if event.envelope_id in accepted:
            checked.result.status, checked.result.id = "accepted", event.envelope_id
        else:
            checked.result.status, checked.result.id = "duplicate", originals.get(event.event_id)


async def source_of_key(session: AsyncSession, *, key_id: str) -> str:
    """The dedup namespace of a key: the source it was issued for, else its own id."""
    source = await session.scalar(select(ApiKeySource.source).where(ApiKeySource.key_id == key_id))
    return source or key_id


_LINKED_ANONYMOUS_IDS = text(
    "SELECT DISTINCT payload->>'anonymous_id' FROM ingested_events "
    "WHERE customer_key = :customer_id AND kind = 'identify' AND payload->>'anonymous_id' IS NOT NULL"
)
# Keeps what anonymous aggregates need (orders, amounts, interaction types and times); drops
# traits and free-form properties, and replaces the customer's ids with a random pseudonym.
_ANONYMISE_EVENTS = text(
    """
    UPDATE ingested_events SET
        customer_key = CAST(:pseudonym AS text),
        payload = CASE kind
            WHEN 'identify' THEN jsonb_build_object('event_id', payload->'event_id', 'erased', true)
            WHEN 'interaction' THEN payload || jsonb_build_object('customer_id', CAST(:pseudonym AS text),
                'anonymous_id', NULL, 'properties', '{}'::jsonb, 'erased', true)
            ELSE payload || jsonb_build_object('customer_id', CAST(:pseudonym AS text), 'erased', true)
        END
    WHERE customer_key = ANY(CAST(:keys AS text[]))
    """
)
_FORGET_QUEUED = text(
    "DELETE FROM outbox WHERE key = ANY(CAST(:keys AS text[])) AND topic = ANY(CAST(:topics AS text[]))"
)


async def erase_customer(session: AsyncSession, *, customer_id: str) -> int:
    """Anonymise the customer's events (and the anonymous history linked to them); returns the rows changed.

    Queued and retained outbox copies are deleted too: they carry the same personal data.
    A repeat finds nothing left to change.
    """
    linked = (await session.execute(_LINKED_ANONYMOUS_IDS, {"customer_id": customer_id})).scalars().all()
    keys = [customer_id, *linked]
    pseudonym = f"erased-{uuid.uuid4().hex}"
    changed = await session.execute(_ANONYMISE_EVENTS, {"pseudonym": pseudonym, "keys": keys})
    await session.execute(_FORGET_QUEUED, {"keys": keys, "topics": sorted(set(events.TOPIC_BY_TYPE.values()))})
    return int(changed.rowcount or 0)  # type: ignore[attr-defined]
