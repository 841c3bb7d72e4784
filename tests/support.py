"""Helpers the cross-service tests share: building purchases and reading loyalty's ledger."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def purchase(customer_id: str | None = None, *, total: str = "39.80", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "order_id": f"ord-{uuid.uuid4().hex}",
        "customer_id": customer_id or f"cus-{uuid.uuid4().hex[:12]}",
        "occurred_at": datetime.now(UTC).isoformat(),
        "currency": "USD",
        "channel": "web",
        "items": [{"sku": "SKU-1", "name": "Mug", "category": "kitchen", "quantity": 1, "unit_price": total}],
        "total": total,
    }
    body.update(overrides)
    return body


async def ledger_counts(engine: AsyncEngine, customer_ids: list[str]) -> dict[str, tuple[int, int]]:
    """customer_id -> (earn entries, balance) in loyalty's database."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "select m.customer_id, m.points, count(l.id) from members m "
                "left join ledger_entries l on l.customer_id = m.customer_id and l.kind = 'earn' "
                "where m.customer_id = any(:ids) group by m.customer_id, m.points"
            ),
            {"ids": customer_ids},
        )
        return {row[0]: (int(row[2]), int(row[1])) for row in rows}


async def pending_outbox(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("select count(*) from outbox where state = 'pending'"))).scalar_one())
