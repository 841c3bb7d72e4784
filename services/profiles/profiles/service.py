"""Applying events to profiles: the rules. Never commits: the consumed message (or the request) does.

Each fact is first recorded under its natural id (order id, refund id, event id, feedback id);
only a fact inserted now changes the aggregates, so a redelivery is a no-op. The aggregates are
sums, min/max, or "latest by (time, id)" choices: the same whatever the arrival order. The
set-based handlers that apply them, a fetched batch at a time, are in batch.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

# Interactions that say nothing about interest in the product they name.
NOT_INTEREST = frozenset({"remove_from_cart"})


def customer_key(customer_id: str) -> str:
    """How an erased customer is remembered: a hash, so the tombstone holds no identifier."""
    return hashlib.sha256(customer_id.encode()).hexdigest()


def not_erased_memo(session: AsyncSession) -> set[str]:
    """Customers known not erased in this transaction (a consumed batch is one), looked up once."""
    memo: set[str] = session.info.setdefault("profiles_not_erased", set())
    return memo


def forget_in_session(session: AsyncSession, customer_id: str) -> None:
    """After an erasure in this transaction, later events for the customer must see the tombstone."""
    not_erased_memo(session).discard(customer_id)


def interaction_property(properties: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = properties.get(name)
    return str(value)[:limit] if isinstance(value, str | int) and str(value) else None


def utcnow() -> datetime:
    return datetime.now(UTC)
