"""The profile as others see it: the snapshot in profile.updated, the HTTP view, and publishing changes.

Rows are plain mappings of the customers table's columns (read with asyncpg, jsonb as text and
parsed here), so the hot paths (publishing, GET) never build ORM objects.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from profiles import sql
from profiles.config import ProfilesSettings
from profiles.events import PROFILE_UPDATED, SOURCE
from profiles.models import Affinity
from shared.db import transaction_connection
from shared.money import is_currency, minor_unit
from shared.outbox import MessageTooLarge
from shared.topics import PROFILES

# Never leaves profiles' database in an event (GET and the export show them to authorised callers).
PRIVATE_TRAITS = frozenset({"email", "phone", "name", "first_name", "last_name", "address"})

Row = Mapping[str, Any]
PUBLISH_LOCK_TIMEOUT = "200ms"
JSON_COLUMNS = ("order_channels", "interaction_counts", "interaction_channels")
# What a snapshot reads from customers (jsonb as text: the connection's codecs do not matter).
SNAPSHOT_COLUMNS = """
    c.customer_id, c.version, c.orders, c.currency, c.currency_orders, c.gross_revenue, c.refunded_amount,
    c.net_revenue, c.refunds, c.first_purchase_at, c.last_purchase_at, c.order_channels::text as order_channels,
    c.interaction_counts::text as interaction_counts, c.interaction_channels::text as interaction_channels,
    c.last_seen_at, c.loyalty_tier, c.loyalty_points, c.nps_last, c.csat_sum, c.csat_count, c.rating_sum,
    c.rating_count, c.sentiment_sum, c.sentiment_count, c.complaints, c.feedback_count, c.updated_at
"""


def customer_row(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    for column in JSON_COLUMNS:
        if isinstance(row.get(column), str):
            row[column] = orjson.loads(row[column])
    return row


def money(amount: Decimal | None, currency: str | None) -> str | None:
    if amount is None:
        return None
    places = minor_unit(currency) if currency and is_currency(currency) else 2
    return f"{amount:.{places}f}"


def _time(value: datetime | None) -> str | None:
    # What isoformat() writes (tested), several times faster for an aware time.
    return orjson.dumps(value)[1:-1].decode() if value else None


def _ratio(score_sum: float, count: int) -> float | None:
    """Average of scores (CSAT, ratings, sentiment), not money."""
    return round(score_sum / count, 2) if count else None


def affinity_score(settings: ProfilesSettings) -> Any:
    return Affinity.purchased * settings.purchase_weight + Affinity.views * settings.view_weight


def stage_of(row: Row, settings: ProfilesSettings, now: datetime) -> str:
    """The lifecycle stage at `now`: the same rules as lifecycle.lifecycle_stage (SQL), first match wins."""
    return stages_at(settings, now)(row)


def stages_at(settings: ProfilesSettings, now: datetime) -> Callable[[Row], str]:
    """stage_of at `now` with the cut-off times computed once (the publisher asks for hundreds of rows)."""
    churned = now - timedelta(days=settings.churned_after_days)
    at_risk = now - timedelta(days=settings.at_risk_after_days)
    new_since = now - timedelta(days=settings.new_customer_days)
    loyal, repeat = settings.loyal_min_orders, settings.repeat_min_orders

    def stage(row: Row) -> str:
        orders, first, last = row["orders"], row["first_purchase_at"], row["last_purchase_at"]
        if orders <= 0:
            return "prospect"
        if last is not None and last < churned:
            return "churned"
        if last is not None and last < at_risk:
            return "at_risk"
        if orders >= loyal:
            return "loyal"
        if orders >= repeat:
            return "repeat"
        if first is not None and first >= new_since:
            return "new"
        return "active"

    return stage


def preferred_channels(customer: Row) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    for channel, n in [*customer["order_channels"].items(), *customer["interaction_channels"].items()]:
        counts[channel] += int(n)
    return sorted(counts, key=lambda channel: (-counts[channel], channel))


def purchase_statistics(customer: Row) -> dict[str, Any]:
    orders, currency, first, last = (
        customer["orders"],
        customer["currency"],
        customer["first_purchase_at"],
        customer["last_purchase_at"],
    )
    currency_orders = customer["currency_orders"]
    average_order_value = customer["net_revenue"] / currency_orders if currency_orders else None
    average_days = None
    if orders >= 2 and first and last:
        span = (last - first).total_seconds() / 86_400
        average_days = round(span / (orders - 1), 2)
    return {
        "orders": orders,
        "net_revenue": money(customer["net_revenue"], currency),
        "currency": currency,
        "average_order_value": money(average_order_value, currency),
        "first_purchase_at": _time(first),
        "last_purchase_at": _time(last),
        "average_days_between_orders": average_days,
        "refunds": customer["refunds"],
    }


def satisfaction(customer: Row) -> dict[str, Any]:
    return {
        "nps_last": customer["nps_last"],
        "csat_avg": _ratio(customer["csat_sum"], customer["csat_count"]),
        "rating_avg": _ratio(customer["rating_sum"], customer["rating_count"]),
        "sentiment_avg": _ratio(customer["sentiment_sum"], customer["sentiment_count"]),
        "complaints": customer["complaints"],
        "feedback_count": customer["feedback_count"],
    }


def profile_snapshot(
    customer: Row,
    *,
    stage: str,
    top_categories: Sequence[str],
    segments: Sequence[str],
    traits: Mapping[str, Any],
) -> dict[str, Any]:
    """The profile in profile.updated (JSON-ready; no e-mail, phone or name)."""
    snapshot = {
        "lifecycle_stage": stage,
        **purchase_statistics(customer),
        "top_categories": list(top_categories),
        "preferred_channels": preferred_channels(customer),
        "interaction_counts": dict(sorted(customer["interaction_counts"].items())),
        "last_seen_at": _time(customer["last_seen_at"]),
        "loyalty_tier": customer["loyalty_tier"],
        "loyalty_points": customer["loyalty_points"],
        "satisfaction": satisfaction(customer),
        "traits": {k: v for k, v in sorted(traits.items()) if k not in PRIVATE_TRAITS},
        "segments": sorted(segments),
    }
    # Every value is already what JSON gives back (str, int, float, None, lists, str-keyed dicts), so
    # it compares equal to the published snapshot read back from JSONB without a round trip.
    return snapshot


async def top_categories(
    conn: asyncpg.Connection, customer_ids: Sequence[str], *, settings: ProfilesSettings
) -> dict[str, list[str]]:
    # Per customer through the primary key, and only it: the subquery (`offset 0` keeps the kind
    # filter out of it) reads a customer's rows by customer_id. With `kind = 'category'` in the scan,
    # the generic plan cached while the table was nearly empty could scan every category row by
    # (kind, key) for each customer: 6.4 s for 500 customers at 40,000 rows (7.7 ms now).
    rows = await sql.fetch(
        conn,
        """
        select u.customer_id, a.key from unnest($1::text[]) as u(customer_id)
        cross join lateral (
            select key, purchased * $2::numeric + views * $3::numeric as score
            from (select kind, key, purchased, views from affinities where customer_id = u.customer_id offset 0) mine
            where kind = 'category' order by score desc, key limit $4) a
        order by u.customer_id, a.score desc, a.key
        """,
        list(customer_ids),
        settings.purchase_weight,
        settings.view_weight,
        settings.top_categories,
    )
    found: dict[str, list[str]] = defaultdict(list)
    for customer_id, key in rows:
        found[customer_id].append(key)
    return found


async def current_segments(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> dict[str, list[str]]:
    rows = await sql.fetch(
        conn,
        "select customer_id, segment_key from segment_memberships where customer_id = any($1::text[]) and member",
        list(customer_ids),
    )
    found: dict[str, list[str]] = defaultdict(list)
    for customer_id, key in rows:
        found[customer_id].append(key)
    return found


async def all_traits(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = await sql.fetch(
        conn,
        "select customer_id, trait, value::text from customer_traits where customer_id = any($1::text[])",
        list(customer_ids),
    )
    found: dict[str, dict[str, Any]] = defaultdict(dict)
    for customer_id, trait, value in rows:
        found[customer_id][trait] = orjson.loads(value)
    return found


def profile_updated_message(
    event_id: str, customer_id: str, version: int, changed: list[str], now: datetime, profile: bytes
) -> bytes:
    """The profile.updated envelope (shape of events.profile_updated), encoded once with orjson: the
    snapshot already encoded for the database is spliced in rather than encoded again."""
    header = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": SOURCE,
            "type": PROFILE_UPDATED,
            "time": now,
            "subject": customer_id,
            "datacontenttype": "application/json",
        }
    )
    data = orjson.dumps({"customer_id": customer_id, "version": version, "changed": changed, "occurred_at": now})
    return header[:-1] + b',"data":' + data[:-1] + b',"profile":' + profile + b"}}"


def _uuid4(hex32: str) -> str:
    """A random (version 4) UUID from 32 random hex digits, as str(uuid.uuid4()) writes it."""
    variant = "89ab"[int(hex32[16], 16) & 3]
    return f"{hex32[:8]}-{hex32[8:12]}-4{hex32[13:16]}-{variant}{hex32[17:20]}-{hex32[20:]}"


def changed_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    if before is None:
        return sorted(after)
    return sorted(key for key in after if before.get(key) != after[key])


async def _publisher_connection(session: AsyncSession) -> asyncpg.Connection:
    """The session's asyncpg connection, in its transaction, giving up on any lock wait after 200 ms.

    Nothing the publisher does should wait: a wait means a consumer batch holds the row, and the
    profile is published by a later run (well before PostgreSQL's 1 s deadlock check would fire).
    """
    # And no sequential scans: every statement of a run is a keyed lookup, and on a young database
    # (make bench) a generic plan cached while segment_memberships was nearly empty scanned all of it
    # for each batch once it had grown (210 ms a call; 870 ms reproduced at 120,000 rows, 2.5 ms with
    # statistics), holding the batch's claimed rows, and the consumer waiting on them, meanwhile.
    await session.execute(
        text("select set_config('lock_timeout', :timeout, true), set_config('enable_seqscan', 'off', true)"),
        {"timeout": PUBLISH_LOCK_TIMEOUT},
    )
    return await transaction_connection(session)


def snapshots_to_publish(
    rows: Sequence[Row],
    *,
    categories: Mapping[str, list[str]],
    segments: Mapping[str, list[str]],
    traits: Mapping[str, dict[str, Any]],
    settings: ProfilesSettings,
    now: datetime,
) -> tuple[list[int], list[str], list[str], list[tuple[str, str, str]]]:
    """Per claimed row: its version, snapshot (JSON) and stage to store, and the profile.updated
    (event id, key, payload) of those whose snapshot differs from the one last published."""
    versions: list[int] = []
    snapshots: list[str] = []
    stages: list[str] = []
    messages: list[tuple[str, str, str]] = []  # event id, key, payload
    stage_of_row = stages_at(settings, now)
    random_ids = os.urandom(16 * len(rows)).hex()  # one read for every event id of the batch
    for n, row in enumerate(rows):
        customer_id = row["customer_id"]
        stage = stage_of_row(row)
        snapshot = profile_snapshot(
            row,
            stage=stage,
            top_categories=categories.get(customer_id, []),
            segments=segments.get(customer_id, []),
            traits=traits.get(customer_id, {}),
        )
        encoded = orjson.dumps(snapshot)
        text = encoded.decode()
        published = row["published"]  # the json text the last run wrote (or None)
        changed = [] if text == published else changed_fields(orjson.loads(published) if published else None, snapshot)
        version = row["version"] + 1 if changed else row["version"]
        versions.append(version)
        snapshots.append(text)
        stages.append(stage)
        if changed:
            event_id = _uuid4(random_ids[32 * n : 32 * n + 32])
            payload = profile_updated_message(event_id, customer_id, version, changed, now, encoded)
            if len(payload) + len(customer_id) > settings.max_message_bytes:
                raise MessageTooLarge(f"profile.updated {event_id} is {len(payload)} bytes")
            messages.append((event_id, customer_id, payload.decode()))
    return versions, snapshots, stages, messages


async def publish_profile_changes(
    session: AsyncSession, *, settings: ProfilesSettings, now: datetime, limit: int | None = None, after: str = ""
) -> tuple[int, int, str]:
    """One batch of dirty profiles after the key `after`: publish profile.updated for those that changed;
    (claimed, published, last key claimed).

    Claimed with `for update skip locked`, so a profile the consumer is changing waits for the next run.
    """
    conn = await _publisher_connection(session)
    claimed = await conn.fetch(
        f"""
        select {SNAPSHOT_COLUMNS}, c.published::text as published from customers c
        where c.dirty and c.customer_id > $2 order by c.customer_id limit $1 for update skip locked
        """,
        limit or settings.publish_batch_size,
        after,
    )
    if not claimed:
        return 0, 0, after
    rows = [customer_row(record) for record in claimed]
    ids = [row["customer_id"] for row in rows]
    categories = await top_categories(conn, ids, settings=settings)
    segments = await current_segments(conn, ids)
    traits = await all_traits(conn, ids)
    versions, snapshots, stages, messages = snapshots_to_publish(
        rows, categories=categories, segments=segments, traits=traits, settings=settings, now=now
    )
    await sql.execute(
        conn,
        """
        update customers c set version = u.version, published = u.published::json, lifecycle_stage = u.stage,
            dirty = false
        from unnest($1::text[], $2::bigint[], cast($3 as text[]), $4::text[])
            as u(customer_id, version, published, stage)
        where c.customer_id = u.customer_id
        """,
        ids,
        versions,
        snapshots,
        stages,
    )
    if messages:
        await sql.execute(
            conn,
            "insert into outbox (event_id, topic, key, payload)"
            " select u.event_id, $1, u.key, u.payload"
            " from unnest($2::text[], $3::text[], cast($4 as text[])) as u(event_id, key, payload)",  # payloads: binary
            PROFILES,
            [m[0] for m in messages],
            [m[1] for m in messages],
            [m[2] for m in messages],
        )
    return len(rows), len(messages), ids[-1]


async def publish_all_changes(session: AsyncSession, *, settings: ProfilesSettings, now: datetime) -> int:
    """Publish batches until no unlocked dirty profile is left; returns how many were published."""
    published, _ = await publish_changes(session, settings=settings, now=now)
    return published


async def publish_changes(
    session: AsyncSession,
    *,
    settings: ProfilesSettings,
    now: datetime,
    max_profiles: int | None = None,
    after: str = "",
) -> tuple[int, str]:
    """Publish batches of dirty profiles from the key `after` on, until none is left (then once more
    from the first key) or `max_profiles` were claimed; (published, key to continue after).

    Each batch starts after the last key claimed: the `customers_dirty` index entries of the rows this
    transaction already published stay until it ends, and claiming from the first key every time
    walked them all again (draining 20,000 dirty profiles took up to a minute). `max_profiles`
    bounds the transaction: the claimed rows stay locked until it ends, and a consumer batch that
    touches one of them waits for it.
    """
    total, claimed_total, wrapped = 0, 0, not after
    while max_profiles is None or claimed_total < max_profiles:
        claimed, published, after = await publish_profile_changes(session, settings=settings, now=now, after=after)
        total += published
        claimed_total += claimed
        if claimed:
            continue
        if wrapped and not after:
            return total, ""
        after, wrapped = "", True  # once more from the first key: profiles made dirty behind the last one
    return total, after
