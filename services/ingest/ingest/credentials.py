"""API keys as ingest manages them: issued with a source name, listed, rotated and revoked.

The key rows and their replication to every service are shared.apikeys'; ingest adds the
source each key sends as (api_key_sources), which rotation carries over to the new key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ingest.events import SOURCE
from ingest.models import ApiKeySource
from ingest.schemas import ApiKeyRead
from shared.apikeys import issue_api_key, revoke_api_key
from shared.tables import api_keys


async def create_key(
    session: AsyncSession,
    *,
    name: str,
    scopes: list[str],
    source: str | None = None,
    rate_limit_per_second: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKeyRead, str]:
    """A new key and its plaintext, which is shown once and never stored."""
    issued, key = await issue_api_key(
        session,
        name=name,
        scopes=scopes,
        rate_limit_per_second=rate_limit_per_second,
        expires_at=expires_at,
        source=SOURCE,
    )
    await session.execute(insert(ApiKeySource).values(key_id=issued.key_id, source=source or issued.key_id))
    found = await get_key(session, key_id=issued.key_id)
    assert found is not None
    return found, key


def _keys_with_sources() -> Select[Any]:
    return select(
        api_keys.c.key_id,
        api_keys.c.name,
        api_keys.c.scopes,
        api_keys.c.rate_limit_per_second,
        api_keys.c.created_at,
        api_keys.c.expires_at,
        api_keys.c.revoked_at,
        ApiKeySource.source,
    ).outerjoin(ApiKeySource, ApiKeySource.key_id == api_keys.c.key_id)


def _read(row: Row[Any]) -> ApiKeyRead:
    values = dict(row._mapping)
    values["source"] = values["source"] or values["key_id"]
    values["scopes"] = list(values["scopes"])
    return ApiKeyRead.model_validate(values)


async def get_key(session: AsyncSession, *, key_id: str) -> ApiKeyRead | None:
    row = (await session.execute(_keys_with_sources().where(api_keys.c.key_id == key_id))).first()
    return _read(row) if row is not None else None


async def list_keys(session: AsyncSession, *, include_revoked: bool = False) -> list[ApiKeyRead]:
    query = _keys_with_sources().order_by(api_keys.c.created_at, api_keys.c.key_id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [_read(row) for row in (await session.execute(query)).all()]


async def rotate_key(session: AsyncSession, *, key_id: str) -> tuple[ApiKeyRead, str] | None:
    """A new key like the old one (name, scopes, source, limit, expiry); the old one is revoked at once."""
    old = await get_key(session, key_id=key_id)
    if old is None or old.revoked_at is not None:
        return None
    new = await create_key(
        session,
        name=old.name,
        scopes=old.scopes,
        source=old.source,
        rate_limit_per_second=old.rate_limit_per_second,
        expires_at=old.expires_at,
    )
    await revoke_api_key(session, key_id=key_id, source=SOURCE)
    return new


async def revoke_key(session: AsyncSession, *, key_id: str) -> bool:
    return await revoke_api_key(session, key_id=key_id, source=SOURCE)
