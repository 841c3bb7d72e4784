"""Idempotency-Key handling: the first request with a key answers; the same key replays that answer.

The key row is inserted with ON CONFLICT DO NOTHING in the request's transaction: a second request
with the same key waits on the first one's uncommitted row, then reads its stored answer. A request
that fails (409, 404) rolls back and leaves no key behind, so it may be retried with the same key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from loyalty.models import IdempotencyKey


class IdempotencyKeyReused(Exception):
    """The key was first used with another request."""


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: bytes  # the exact bytes first sent, so a replay is identical


def request_hash(operation: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps([operation, body], option=orjson.OPT_SORT_KEYS)).hexdigest()


async def claim(session: AsyncSession, *, customer_id: str, key: str, fingerprint: str) -> StoredAnswer | None:
    """None when this request owns the key and must answer; else the first request's answer."""
    claimed = (
        await session.execute(
            insert(IdempotencyKey)
            .values(customer_id=customer_id, key=key, request_hash=fingerprint)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        )
    ).first()
    if claimed is not None:
        return None
    row = (
        await session.execute(
            select(IdempotencyKey.request_hash, IdempotencyKey.status_code, IdempotencyKey.response).where(
                IdempotencyKey.customer_id == customer_id, IdempotencyKey.key == key
            )
        )
    ).one()
    if row.request_hash != fingerprint:
        raise IdempotencyKeyReused(key)
    return StoredAnswer(int(row.status_code), row.response.encode())


async def remember(session: AsyncSession, *, customer_id: str, key: str, status_code: int, body: bytes) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.customer_id == customer_id, IdempotencyKey.key == key)
        .values(status_code=status_code, response=body.decode())
    )


async def forget_older_than(session: AsyncSession, *, cutoff: datetime) -> int:
    result = await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff).returning(IdempotencyKey.key)
    )
    return len(result.all())
