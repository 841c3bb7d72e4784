"""What loyalty does with each event it consumes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from loyalty import service
from loyalty.events import PurchaseCompleted
from shared.consumer import HandlerMap
from shared.envelope import Envelope

# The base earning rate until configurable earning rules arrive: one point per whole currency unit.
BASE_POINTS_PER_UNIT = 1


async def credit_purchase(session: AsyncSession, event: Envelope) -> None:
    purchase = PurchaseCompleted.model_validate(event.data)
    await service.earn(
        session,
        customer_id=purchase.customer_id,
        points=service.points_for_amount(purchase.total, BASE_POINTS_PER_UNIT),
        cause_type="order",
        cause_id=purchase.order_id,
        occurred_at=purchase.occurred_at,
    )


HANDLERS: HandlerMap = {"purchase.completed": [credit_purchase]}
