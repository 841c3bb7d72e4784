"""API key lifecycle: ingest issues and revokes keys; every service keeps a copy of the hashes.

Keys are created where the key tool runs (ingest's admin API); `apikey.issued` / `apikey.revoked`
on ingest.apikeys.v1 carry only the hash, and each service's consumer upserts its api_keys table.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import generate_api_key, hash_api_key
from shared.consumer import HandlerMap
from shared.envelope import Envelope, new_event
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.tables import api_keys
from shared.topics import API_KEYS

APIKEY_ISSUED = "apikey.issued"
APIKEY_REVOKED = "apikey.revoked"


class ApiKeyIssued(BaseModel):
    key_id: str
    key_hash: str
    name: str
    scopes: list[str]
    rate_limit_per_second: int | None = None
    expires_at: AwareDatetime | None = None
    issued_at: AwareDatetime


class ApiKeyRevoked(BaseModel):
    key_id: str
    revoked_at: AwareDatetime


async def issue_api_key(
    session: AsyncSession,
    *,
    name: str,
    scopes: list[str],
    rate_limit_per_second: int | None = None,
    expires_at: datetime | None = None,
    source: str,
) -> tuple[ApiKeyIssued, str]:
    """Create a key; returns its record and the plaintext key, which is shown once and never stored."""
    key_id, key = generate_api_key()
    issued = ApiKeyIssued(
        key_id=key_id,
        key_hash=hash_api_key(key),
        name=name,
        scopes=sorted(set(scopes)),
        rate_limit_per_second=rate_limit_per_second,
        expires_at=expires_at,
        issued_at=datetime.now(UTC),
    )
    event = new_event(type=APIKEY_ISSUED, source=source, subject=key_id, data=issued)
    await store_issued_key(session, event)
    await add_to_outbox(session, [OutgoingMessage(API_KEYS, key_id, event)])
    return issued, key


async def revoke_api_key(session: AsyncSession, *, key_id: str, source: str) -> bool:
    revoked = ApiKeyRevoked(key_id=key_id, revoked_at=datetime.now(UTC))
    event = new_event(type=APIKEY_REVOKED, source=source, subject=key_id, data=revoked)
    if not await _mark_revoked(session, revoked):
        return False
    await add_to_outbox(session, [OutgoingMessage(API_KEYS, key_id, event)])
    return True


async def store_issued_key(session: AsyncSession, event: Envelope) -> None:
    issued = ApiKeyIssued.model_validate(event.data)
    values = issued.model_dump(exclude={"issued_at"}) | {"created_at": issued.issued_at}
    await session.execute(insert(api_keys).values(**values).on_conflict_do_nothing(index_elements=["key_id"]))


async def store_revoked_key(session: AsyncSession, event: Envelope) -> None:
    await _mark_revoked(session, ApiKeyRevoked.model_validate(event.data))


async def _mark_revoked(session: AsyncSession, revoked: ApiKeyRevoked) -> bool:
    result = await session.execute(
        update(api_keys)
        .where(api_keys.c.key_id == revoked.key_id)
        .where(api_keys.c.revoked_at.is_(None))
        .values(revoked_at=revoked.revoked_at)
        .returning(api_keys.c.key_id)
    )
    return result.first() is not None


API_KEY_HANDLERS: HandlerMap = {APIKEY_ISSUED: [store_issued_key], APIKEY_REVOKED: [store_revoked_key]}
