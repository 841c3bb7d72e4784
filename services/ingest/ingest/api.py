"""Ingest HTTP API: thin routes over service.accept_event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.exceptions import RequestValidationError

from ingest import events
from ingest.config import IngestSettings
from ingest.schemas import EventAccepted, PurchaseIn, as_validation_errors, purchase_errors
from ingest.service import IncomingEvent, accept_event
from shared.auth import ApiKeyPrincipal, require_scope
from shared.db import SessionDep
from shared.topics import PURCHASES

router = APIRouter(prefix="/v1", tags=["ingest"])
Writer = Annotated[ApiKeyPrincipal, Depends(require_scope("ingest:write"))]


def _settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings
    return settings


@router.post(
    "/purchases",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EventAccepted,
    responses={200: {"model": EventAccepted, "description": "Already accepted: nothing published again"}},
)
async def post_purchase(
    purchase: PurchaseIn, principal: Writer, session: SessionDep, request: Request, response: Response
) -> EventAccepted:
    settings = _settings(request)
    errors = purchase_errors(purchase, datetime.now(UTC), timedelta(seconds=settings.max_future_skew_seconds))
    if errors:
        raise RequestValidationError(as_validation_errors(errors))
    envelope = events.purchase_completed(purchase)
    incoming = IncomingEvent(
        source=principal.key_id,
        event_id=purchase.event_id,
        kind="purchase",
        customer_key=purchase.customer_id,
        occurred_at=purchase.occurred_at,
        topic=PURCHASES,
        envelope=envelope,
    )
    if not await accept_event(session, event=incoming, max_message_bytes=settings.max_message_bytes):
        response.status_code = status.HTTP_200_OK
        return EventAccepted(status="duplicate", event_id=purchase.event_id)
    return EventAccepted(status="accepted", event_id=purchase.event_id, id=envelope.id)
