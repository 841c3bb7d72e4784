"""Membership changes, set-based: diff the wanted members against the stored ones in one statement.

Entries are `INSERT ... RETURNING` of the wanted rows not yet stored (`ON CONFLICT DO NOTHING` too
for one customer, see `_diff_sql`) and exits `DELETE ... RETURNING`, and the history rows and outbox
events are written from exactly those returned rows, in the same statement. (While a stay lasts its
member row is also its entry's history row; the exit writes both history rows.)
So an event exists only for a row that really changed: a redelivered input, a repeated recompute
or a real-time update racing a recompute can never publish a second entered (or exited) for the
same stay, and nothing is published when nothing changed.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from segments import pg
from segments.envelopes import PART_COUNT, json_time, membership_template, payload_sql
from shared.db import transaction_connection
from shared.topics import SEGMENT_MEMBERSHIP

# Whole-base work holds this exclusively and one-customer updates share it: they never interleave,
# so they cannot deadlock on each other's rows (a real-time update waits for a running recompute).
BASE_LOCK = zlib.crc32(b"segments:whole-base")
ENTERED = "segment.entered"
EXITED = "segment.exited"


@dataclass(frozen=True)
class Changes:
    entered: int = 0
    exited: int = 0

    def __add__(self, other: Changes) -> Changes:
        return Changes(self.entered + other.entered, self.exited + other.exited)


async def lock_whole_base(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BASE_LOCK})


LOCK_FOR_ONE_CUSTOMER = "SELECT pg_advisory_xact_lock_shared(CAST(:base_lock AS bigint))"


async def lock_for_one_customer(session: AsyncSession) -> None:
    await session.execute(text(LOCK_FOR_ONE_CUSTOMER), {"base_lock": BASE_LOCK})


_TEMPLATE_COLUMNS = ("segment_id", "type", *(f"part{i}" for i in range(PART_COUNT)))
# Event ids: a random per-statement prefix (80 bits) and the change's history id (unique in this
# database for ever: the entry's member `change_id`, the exit's history row id), shaped as a UUID
# (version 8, "custom"). gen_random_uuid() per row cost ~4 µs, 9 s of a million-customer first
# recompute; an md5 per row about a tenth of that; this almost nothing.
# (`to_hex` of id + 2^48 without its leading 1 is the id in 12 hex digits at half the cost of lpad;
# history ids stay below 2^48, 281 trillion changes.)
_EVENT_ID = "CAST(:id_prefix AS text) || substr(to_hex({change_id} + 281474976710656), 2)"
# History rows and members share one id sequence: a member's `change_id` is the id its entry had.
_CHANGE_ID = "nextval('membership_changes_id_seq')"


def _event_id_prefix() -> str:
    """`xxxxxxxx-xxxx-8xxx-yxxx-`: 80 random bits, version 8, RFC 9562 variant."""
    h = uuid.uuid4().hex
    return f"{h[:8]}-{h[8:12]}-8{h[12:15]}-{'89ab'[int(h[15], 16) % 4]}{h[16:19]}-"


@lru_cache(maxsize=64)
def _diff_sql(targets_sql: str, customer_filter: bool, materialize: bool = True) -> str:
    """`targets_sql` yields (segment_id, customer_id, reason) for the segments in :segment_ids."""
    only_customer = "AND m.customer_id = ANY(CAST(:customer_ids AS text[]))" if customer_filter else ""
    # A whole-base diff runs under the exclusive base lock, so the anti-join below is exact: no other
    # writer can add a member meanwhile, and its targets are unique per (segment, customer) by
    # construction. It skips the speculative insertion ON CONFLICT costs per row (a duplicate would
    # fail the whole statement, never publish twice). A few customers' update only holds the shared lock.
    on_conflict = "ON CONFLICT DO NOTHING" if customer_filter else ""
    # Whole-base entries in key order: the member indexes fill page by page, not at random (without
    # the sort, an index over (segment, change_id) came out 76 % larger and the WAL 5 % more).
    order = "" if customer_filter else "ORDER BY t.segment_id, t.customer_id"
    # Payloads are the envelope templates of envelopes.py filled in per row (a recompute may publish millions).
    payload = payload_sql(
        "tpl",
        {
            "id": "'\"' || c.event_id || '\"'",
            "time": "CAST(:at_json AS text)",
            "subject": "c.customer_json",
            "customer_id": "c.customer_json",
            "reason": "to_json(c.reason)::text",
            "occurred_at": "CAST(:at_json AS text)",
        },
    )
    # The templates arrive as one JSON array of [segment_id, type, part0, ...] rows: text arrays are
    # encoded element by element by asyncpg (~1 us each, hundreds per statement), one JSON text is
    # sent as it is, and it is built once per set of segments (`_templates_json`). OFFSET 0 keeps
    # the subquery from being pulled up: inlined, each `->>` ran once per event row (2.36M in a
    # first full recompute of 1M customers: 49.5 -> 64.7 s), fenced once per template.
    templates = ", ".join(f"t.row ->> {i} AS {c}" for i, c in enumerate(_TEMPLATE_COLUMNS))
    # History: an entry is the member row itself (`change_id`, `reason`, `entered_at`) as long as the
    # stay lasts; the exit writes the entry's history row (same id, reason and time) and its own.
    # So a stay costs one history row less while it lasts and the same rows once it ended.
    return f"""
    WITH target AS {"" if materialize else "NOT "}MATERIALIZED ({targets_sql}),
    exited AS (
        DELETE FROM segment_members m
        WHERE m.segment_id = ANY(CAST(:segment_ids AS text[])) {only_customer}
          AND NOT EXISTS (SELECT 1 FROM target t WHERE t.segment_id = m.segment_id AND t.customer_id = m.customer_id)
        RETURNING m.segment_id, m.customer_id, m.reason, m.change_id, m.entered_at
    ),
    entered AS (
        INSERT INTO segment_members (segment_id, customer_id, reason, entered_at, change_id)
        SELECT t.segment_id, t.customer_id, t.reason, CAST(:at AS timestamptz), {_CHANGE_ID} FROM target t
        WHERE NOT EXISTS (
            SELECT 1 FROM segment_members m
            WHERE m.segment_id = ANY(CAST(:segment_ids AS text[])) {only_customer}
              AND m.segment_id = t.segment_id AND m.customer_id = t.customer_id)
        {order} {on_conflict}
        RETURNING segment_id, customer_id, reason, change_id
    ),
    exits AS (SELECT e.*, {_CHANGE_ID} AS exit_id FROM exited e),
    logged AS (
        INSERT INTO membership_changes (id, segment_id, customer_id, change, reason, occurred_at)
        SELECT change_id, segment_id, customer_id, 'entered', reason, entered_at FROM exits
        UNION ALL
        SELECT exit_id, segment_id, customer_id, 'exited', 'no longer: ' || reason, CAST(:at AS timestamptz)
        FROM exits
    ),
    published AS (
        INSERT INTO outbox (event_id, topic, key, payload)
        SELECT c.event_id, CAST(:topic AS text), c.customer_id, {payload}
        FROM (
            SELECT {_EVENT_ID.format(change_id="change_id")} AS event_id, '{ENTERED}' AS type, segment_id,
                   customer_id, to_json(customer_id)::text AS customer_json, reason
            FROM entered
            UNION ALL
            SELECT {_EVENT_ID.format(change_id="exit_id")}, '{EXITED}', segment_id, customer_id,
                   to_json(customer_id)::text, 'no longer: ' || reason
            FROM exits
        ) c
        JOIN (SELECT {templates} FROM json_array_elements(CAST(:templates AS json)) AS t(row) OFFSET 0) AS tpl
          ON tpl.segment_id = c.segment_id AND tpl.type = c.type
    )
    SELECT (SELECT count(*) FROM entered) AS entered, (SELECT count(*) FROM exited) AS exited
    """


class SegmentLabels(Protocol):
    """What a membership event names of its segment (a `models.Segment` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class _Labels:
    id: str
    key: str
    name: str
    kind: str


async def _template_params(
    conn: asyncpg.Connection, segment_ids: Sequence[str], segments: Sequence[SegmentLabels] | None
) -> dict[str, str]:
    """Each segment's entered and exited envelope templates (the `:templates` of the diff)."""
    if segments is None:
        statement = "SELECT id, key, name, kind FROM segments WHERE id = ANY($1::text[])"
        found = await conn.fetch(statement, list(segment_ids))
        rows: Sequence[SegmentLabels] = [_Labels(r["id"], r["key"], r["name"], r["kind"]) for r in found]
    else:
        wanted = set(segment_ids)
        rows = [segment for segment in segments if segment.id in wanted]
    return {"templates": _templates_json(tuple((row.id, row.key, row.name, row.kind) for row in rows))}


@lru_cache(maxsize=64)
def _templates_json(segments: tuple[tuple[str, str, str, str], ...]) -> str:
    """[[segment_id, type, part0, part1, ...], ...] for every segment's entered and exited template."""
    rows = []
    for segment_id, key, name, kind in segments:
        for event_type in (ENTERED, EXITED):
            template = membership_template(event_type, segment_id, key, name, kind)
            rows.append([segment_id, event_type, *template.parts])
    return orjson.dumps(rows).decode()


async def apply_memberships(
    session: AsyncSession,
    *,
    segment_ids: Sequence[str],
    targets_sql: str,
    params: Mapping[str, Any],
    at: datetime,
    customer_ids: Sequence[str] | None = None,
    segments: Sequence[SegmentLabels] | None = None,
    materialize: bool = True,
    conn: asyncpg.Connection | None = None,
) -> Changes:
    """Make the members of `segment_ids` (all customers, or just `customer_ids`) be `targets_sql`.

    `segments`, when the caller has them loaded in this transaction, saves reading their names again.
    `materialize=False` when `targets_sql` only reads a table: it is scanned twice instead of copied.
    `conn`: the session transaction's asyncpg connection, when the caller has it already.
    """
    if not segment_ids:
        return Changes()
    conn = conn or await transaction_connection(session)
    values = {
        **params,
        "segment_ids": list(segment_ids),
        "at": at,
        "at_json": json_time(at),
        "id_prefix": _event_id_prefix(),
        "topic": SEGMENT_MEMBERSHIP,
        **await _template_params(conn, segment_ids, segments),
    }
    if customer_ids is not None:
        values["customer_ids"] = sorted(customer_ids)
    else:
        await lock_whole_base(session)
        # Whole-base diffs must hash-join: a nested loop re-scanning the table being filled is quadratic.
        await session.execute(text("SET LOCAL enable_nestloop = off"))
    row = await pg.fetchrow(conn, _diff_sql(targets_sql, customer_ids is not None, materialize), values)
    return Changes(int(row["entered"]), int(row["exited"]))


async def apply_customer_memberships(
    session: AsyncSession,
    *,
    customer_id: str,
    segment_ids: Sequence[str],
    wanted: Mapping[str, str],
    at: datetime,
    segments: Sequence[SegmentLabels] | None = None,
) -> Changes:
    """One customer: `wanted` maps each segment (of `segment_ids`) they belong to now to the reason."""
    return await apply_customers_memberships(
        session, wanted={customer_id: wanted}, segment_ids=segment_ids, at=at, segments=segments
    )


async def apply_customers_memberships(
    session: AsyncSession,
    *,
    wanted: Mapping[str, Mapping[str, str]],
    segment_ids: Sequence[str],
    at: datetime,
    segments: Sequence[SegmentLabels] | None = None,
    conn: asyncpg.Connection | None = None,
) -> Changes:
    """Some customers: `wanted[customer][segment]` is the reason each belongs to each segment now.

    Every customer in `wanted` leaves the segments of `segment_ids` missing from their mapping.
    """
    rows = [(segment_id, customer, reason) for customer, own in wanted.items() for segment_id, reason in own.items()]
    targets = (
        "SELECT w.segment_id, w.customer_id, w.reason FROM unnest(CAST(:wanted_segments AS text[]),"
        " CAST(:wanted_customers AS text[]), CAST(:wanted_reasons AS text[])) AS w(segment_id, customer_id, reason)"
    )
    return await apply_memberships(
        session,
        segment_ids=segment_ids,
        targets_sql=targets,
        params={
            "wanted_segments": [r[0] for r in rows],
            "wanted_customers": [r[1] for r in rows],
            "wanted_reasons": [r[2] for r in rows],
        },
        at=at,
        customer_ids=list(wanted),
        segments=segments,
        conn=conn,
    )
