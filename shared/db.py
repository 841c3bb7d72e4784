"""Database engine and the request-scoped session: one HTTP request is one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

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
        pool_pre_ping=True,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


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
SessionDep = Annotated[AsyncSession, Depends(request_session, scope="function")]
