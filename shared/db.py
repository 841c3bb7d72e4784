"""Database engine and the request-scoped session: one HTTP request is one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No pre-ping round trip per checkout; a dropped connection surfaces as a 503 (shared.app).
        pool_pre_ping=False,
        pool_recycle=1800,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


async def _keep_session(_: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's RESET ALL/UNLISTEN/unlock round trip (measured on every /v1/me).

    Safe because these hot paths leave no session state: no SET, LISTEN or session-level advisory
    lock (settings are SET LOCAL, locks xact-scoped); an open transaction is still rolled back.
    """


async def make_pg_pool(url: str, *, size: int) -> asyncpg.Pool:
    """asyncpg pool beside SQLAlchemy's, for the few paths where ORM overhead dominates."""

    async def set_codecs(connection: asyncpg.Connection) -> None:
        for name in ("json", "jsonb"):
            await connection.set_type_codec(name, encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog")

    pool = await asyncpg.create_pool(
        url.replace("postgresql+asyncpg://", "postgresql://", 1),
        min_size=1,
        max_size=size,
        init=set_codecs,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def transaction_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection of the session's transaction, for set-based SQL (pending ORM changes flushed)."""
    await session.flush()
    raw = await session.connection()
    dbapi = await raw.get_raw_connection()
    connection: asyncpg.Connection = dbapi.driver_connection
    if not connection.is_in_transaction():
        # SQLAlchemy's adapter sends BEGIN with the first statement it runs itself: without one,
        # every statement sent straight to asyncpg would commit on its own. Its own BEGIN, started
        # the way its first statement would (one round trip, where a `select 1` made two).
        adapter: Any = dbapi.dbapi_connection
        if getattr(adapter, "_transaction", False) is None and hasattr(adapter, "_start_transaction"):
            await adapter._start_transaction()
        else:
            await raw.exec_driver_sql("select 1")
    return connection


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def request_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield a session in a transaction; commit when the route returns, roll back if it raised.

    The commit happens before the response is sent, so a 2xx answer means the data is durable.
    """
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
    async with sessionmaker() as session, session.begin():
        yield session


# scope="function": the commit runs before the response is sent, so a 2xx means durable.
async def request_connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection for hot read paths (no transaction; ~20x less CPU than the ORM).

    Writes that must commit with outbox rows use `connection.transaction()` inside the route.
    """
    pool: asyncpg.Pool = request.app.state.runtime.pg_pool
    async with pool.acquire() as connection:
        yield connection


PgDep = Annotated[asyncpg.Connection, Depends(request_connection, scope="function")]
SessionDep = Annotated[AsyncSession, Depends(request_session, scope="function")]
