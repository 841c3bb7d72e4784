"""Statements with `:name` parameters run straight on the asyncpg connection of the session's transaction.

The consumer's hot path (a batch of a few events, a handful of statements each) spent more CPU in
SQLAlchemy per statement (text() construction, compilation and cache keys, result wrapping) than
PostgreSQL spent running it. The statements keep their named parameters, so the same text serves
the session (recompute, API) and this path; they are rewritten once per text to asyncpg's `$n`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import asyncpg

# `:name`, not the second colon of a `::type` cast.
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=256)
def positional(statement: str) -> tuple[str, tuple[str, ...]]:
    """The statement with each `:name` as `$n` (one number per name), and the names in number order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return _NAMED.sub(number, statement), tuple(names)


async def fetch(conn: asyncpg.Connection, statement: str, params: Mapping[str, Any]) -> list[asyncpg.Record]:
    sql, names = positional(statement)
    return list(await conn.fetch(sql, *[params[name] for name in names]))


async def fetchrow(conn: asyncpg.Connection, statement: str, params: Mapping[str, Any]) -> asyncpg.Record:
    sql, names = positional(statement)
    row = await conn.fetchrow(sql, *[params[name] for name in names])
    if row is None:
        raise LookupError("the statement returned no row")
    return row


async def execute(conn: asyncpg.Connection, statement: str, params: Mapping[str, Any]) -> None:
    sql, names = positional(statement)
    await conn.execute(sql, *[params[name] for name in names])
