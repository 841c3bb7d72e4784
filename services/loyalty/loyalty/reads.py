"""Member answers read together: the requests that arrive in the same turn of the event loop share one statement.

Under load a process has many GET /v1/me waiting at once; one statement for all of them costs PostgreSQL and
this process a round trip instead of one each. Nothing is cached: every answer comes from a statement that
started after its request arrived, so it shows every change committed before the request, as one statement
per request did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import orjson

from loyalty.config import LoyaltySettings
from loyalty.rules import EarningRules

# The member, its rolling qualifying points and its next expiring lots, for each of the ids in $1.
# Sums are cast to bigint: asyncpg decodes numeric into Decimal, measurably slower.
MEMBER_ANSWERS = """
    SELECT m.customer_id, m.points, m.tier, m.updated_at, m.enrolled_at, q.qualifying,
           x.expiring_points, x.expiring_at
    FROM members m
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(l.qualifying), 0)::bigint AS qualifying FROM ledger_entries l
        WHERE l.customer_id = m.customer_id AND l.qualifying <> 0
          AND l.qualifying_at > now() - make_interval(months => $2)
    ) q
    CROSS JOIN LATERAL (
        SELECT array_agg(e.points ORDER BY e.expires_at) AS expiring_points,
               array_agg(e.expires_at ORDER BY e.expires_at) AS expiring_at
        FROM (
            SELECT l.expires_at, sum(l.remaining)::bigint AS points FROM ledger_entries l
            WHERE l.customer_id = m.customer_id AND l.remaining > 0
              AND l.expires_at <= now() + make_interval(days => $3)
            GROUP BY l.expires_at ORDER BY l.expires_at LIMIT $4
        ) e
    ) x
    WHERE m.customer_id = ANY($1::text[])
"""

MAX_BATCH = 100  # ids per statement; more waiting go in further statements


def member_answer(row: asyncpg.Record, program: EarningRules) -> bytes:
    """The member answer as JSON bytes (MemberRead's fields, in order)."""
    following = program.next_tier(row["tier"])
    qualifying: int = row["qualifying"]
    points, dates = row["expiring_points"] or [], row["expiring_at"] or []
    return orjson.dumps(
        {
            "customer_id": row["customer_id"],
            "points": row["points"],
            "tier": row["tier"],
            "expiring": [{"points": p, "expires_at": at} for p, at in zip(points, dates, strict=True)],
            "updated_at": row["updated_at"],
            "enrolled_at": row["enrolled_at"],
            "qualifying_points": qualifying,
            "next_tier": following.name if following else None,
            "points_to_next_tier": max(0, following.threshold - qualifying) if following else None,
        },
        option=orjson.OPT_UTC_Z,
    )


class RulesSource(Protocol):
    """What the reader needs of api.RulesCache (kept there: writes of the rules forget it)."""

    async def get(self, connection: asyncpg.Connection) -> EarningRules: ...


@dataclass
class MemberReads:
    """Answers per customer id (None: no such member), the ids waiting in one loop turn read by one statement."""

    pool: Callable[[], asyncpg.Pool]  # the runtime's current pool (it is made at start-up)
    rules: RulesSource
    settings: LoyaltySettings
    _waiting: dict[str, list[asyncio.Future[bytes | None]]] = field(default_factory=dict)
    _reading: set[asyncio.Task[None]] = field(default_factory=set)

    async def answer(self, customer_id: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._read_waiting)  # after the other requests of this turn have joined
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.setdefault(customer_id, []).append(future)
        return await future

    def _read_waiting(self) -> None:
        waiting, self._waiting = self._waiting, {}
        ids = list(waiting)
        for start in range(0, len(ids), MAX_BATCH):
            batch = {i: waiting[i] for i in ids[start : start + MAX_BATCH]}
            task = asyncio.get_running_loop().create_task(self._read(batch))
            self._reading.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._reading.discard)

    async def _read(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        try:
            answers = await self._fetch(list(batch))
        except asyncio.CancelledError:  # shutting down: no request waits forever
            for futures in batch.values():
                for future in futures:
                    future.cancel()
            raise
        except Exception as error:
            if len(batch) > 1:
                # One id the database refuses (a NUL byte, say) must not fail the others: each alone, as before.
                await asyncio.gather(*(self._read({i: f}) for i, f in batch.items()))
                return
            for futures in batch.values():
                _settle(futures, error=error)
            return
        for customer_id, futures in batch.items():
            _settle(futures, answer=answers.get(customer_id))

    async def _fetch(self, ids: Sequence[str]) -> dict[str, bytes]:
        async with self.pool().acquire() as connection:
            program = await self.rules.get(connection)
            rows = await connection.fetch(
                MEMBER_ANSWERS,
                ids,
                program.qualifying_window_months,
                self.settings.expiring_window_days,
                self.settings.expiring_max_listed,
            )
        return {row["customer_id"]: member_answer(row, program) for row in rows}


def _settle(
    futures: list[asyncio.Future[bytes | None]], *, answer: bytes | None = None, error: Exception | None = None
) -> None:
    for future in futures:
        if future.done():  # its request went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(answer)
