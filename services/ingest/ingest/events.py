"""Events ingest publishes: what a storefront told us, as CloudEvents on the ingest topics."""

from __future__ import annotations

from typing import Any

from ingest.schemas import PurchaseIn
from shared.envelope import Envelope, new_event
from shared.money import minor_unit
from shared.topics import PURCHASES

SOURCE = "cx.ingest"
PURCHASE_COMPLETED = "purchase.completed"


def purchase_completed(purchase: PurchaseIn) -> Envelope:
    places = minor_unit(purchase.currency)
    data: dict[str, Any] = purchase.model_dump(mode="json")
    for item, parsed in zip(data["items"], purchase.items, strict=True):
        item["unit_price"] = f"{parsed.unit_price:.{places}f}"
    total = purchase.total if purchase.total is not None else purchase.items_total()
    data["total"] = f"{total:.{places}f}"
    return new_event(
        type=PURCHASE_COMPLETED,
        source=SOURCE,
        subject=purchase.customer_id,
        data=data,
        time=purchase.occurred_at,
    )


TOPIC_BY_TYPE = {PURCHASE_COMPLETED: PURCHASES}
