"""Test helpers: builders of the events profiles consumes, shaped like the event catalogue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from profiles.handlers import BATCH_HANDLERS, HANDLERS
from shared.envelope import Envelope, new_event

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Events:
    """Builds envelopes shaped like the event catalogue, one customer at a time."""

    now = NOW

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id

    @staticmethod
    async def apply(session: AsyncSession, *events: Envelope) -> None:
        """Run events through the handlers one at a time (batch handlers get batches of one)."""
        for event in events:
            if event.type in BATCH_HANDLERS:
                await BATCH_HANDLERS[event.type](session, [event])
            else:
                for handler in HANDLERS[event.type]:
                    await handler(session, event)

    @staticmethod
    async def apply_batched(session: AsyncSession, *events: Envelope, batch_size: int = 500) -> None:
        """Run events as the consumer does a fetched batch: per-event handlers in order, then each
        batch handler once with all the batch's events of its type (without processed-message rows)."""
        for start in range(0, len(events), batch_size):
            grouped: dict[str, list[Envelope]] = {}
            for event in events[start : start + batch_size]:
                if event.type in BATCH_HANDLERS:
                    grouped.setdefault(event.type, []).append(event)
                else:
                    for handler in HANDLERS[event.type]:
                        await handler(session, event)
            for event_type, batch in grouped.items():
                await BATCH_HANDLERS[event_type](session, batch)

    def _event(self, type: str, data: dict[str, Any], subject: str | None = None) -> Envelope:
        return new_event(type=type, source="test", subject=subject or self.customer_id, data=data)

    def purchase(
        self,
        order_id: str,
        *,
        days_ago: float,
        items: list[tuple[str, str | None, int, str]],
        currency: str = "USD",
        channel: str = "web",
    ) -> Envelope:
        lines = [
            {"sku": sku, "name": f"Product {sku}", "category": category, "quantity": qty, "unit_price": price}
            for sku, category, qty, price in items
        ]
        total = sum(Decimal(price) * qty for _, _, qty, price in items)
        return self._event(
            "purchase.completed",
            {
                "event_id": f"evt-{order_id}",
                "order_id": order_id,
                "customer_id": self.customer_id,
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
                "currency": currency,
                "channel": channel,
                "store_id": None,
                "items": lines,
                "total": f"{total:.2f}",
            },
        )

    def refund(self, refund_id: str, order_id: str, amount: str, *, days_ago: float) -> Envelope:
        return self._event(
            "purchase.refunded",
            {
                "event_id": refund_id,
                "refund_id": refund_id,
                "order_id": order_id,
                "customer_id": self.customer_id,
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
                "currency": "USD",
                "items": None,
                "amount": amount,
            },
        )

    def interaction(
        self,
        event_id: str,
        type: str,
        *,
        days_ago: float,
        anonymous_id: str | None = None,
        sku: str | None = None,
        category: str | None = None,
        channel: str = "web",
    ) -> Envelope:
        properties = {k: v for k, v in {"sku": sku, "category": category}.items() if v}
        return self._event(
            "interaction.recorded",
            {
                "event_id": event_id,
                "customer_id": None if anonymous_id else self.customer_id,
                "anonymous_id": anonymous_id,
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
                "type": type,
                "channel": channel,
                "properties": properties,
            },
            subject=anonymous_id,
        )

    def identify(
        self, event_id: str, *, days_ago: float, traits: dict[str, Any], anonymous_id: str | None = None
    ) -> Envelope:
        return self._event(
            "customer.identified",
            {
                "event_id": event_id,
                "customer_id": self.customer_id,
                "anonymous_id": anonymous_id,
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
                "traits": traits,
            },
        )

    def points(self, type: str, entry_id: int, balance: int, *, days_ago: float) -> Envelope:
        return self._event(
            type,
            {
                "customer_id": self.customer_id,
                "points": 10,
                "balance": balance,
                "entry_id": entry_id,
                "cause_type": "order",
                "cause_id": f"ord-{entry_id}",
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
            },
        )

    def tier(self, to_tier: str, *, days_ago: float) -> Envelope:
        return self._event(
            "tier.changed",
            {
                "customer_id": self.customer_id,
                "from_tier": "bronze",
                "to_tier": to_tier,
                "qualifying_points": 500,
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
            },
        )

    def feedback(self, feedback_id: str, kind: str, score: int | None, *, days_ago: float) -> Envelope:
        return self._event(
            "feedback.submitted",
            {
                "feedback_id": feedback_id,
                "event_id": feedback_id,
                "customer_id": self.customer_id,
                "kind": kind,
                "score": score,
                "order_id": None,
                "sku": None,
                "channel": "web",
                "sentiment": {"score": 0.5, "label": "positive"},
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
            },
        )

    def segment(self, type: str, key: str, *, days_ago: float) -> Envelope:
        return self._event(
            type,
            {
                "customer_id": self.customer_id,
                "segment_id": f"seg-{key}",
                "segment_key": key,
                "segment_name": key.title(),
                "kind": "rule",
                "reason": "test",
                "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
            },
        )
