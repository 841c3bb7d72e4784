"""`purchase.completed` for a whole fetched batch: the same result as one by one, in ~10 statements.

The per-event path (`handlers.credit_purchase`) costs ~8 ORM statements per purchase. Here a batch
is read in a few set-based statements (erased customers, rules and campaigns, enrolment, the member
rows locked with their rolling qualifying points, which orders are known or have waiting refunds,
segment memberships), the points, balances and tier upgrades are computed in memory per customer in
event order (exactly as `service.credit_purchase` would, one event after the other), and written back
in four statements on the transaction's asyncpg connection: orders, ledger entries (lots), member
rows, outbox events (`points.earned`, `tier.changed`).

A customer with a refund waiting for one of the batch's orders is rare: that customer's purchases
go through the per-event path, in order, in the same transaction. A batch of one (the consumer's
isolated pass after a failure) also takes the per-event path. Anything unexpected (a conflicting
row) raises, so the consumer rolls back and re-applies the batch event by event.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from loyalty import handlers
from loyalty.events import POINTS_EARNED, SOURCE, TIER_CHANGED, PurchaseCompleted
from loyalty.rules import EarningRules, ProgramFile, purchase_earning
from loyalty.service import add_months, lot_expiry
from shared.consumer import BatchHandler, BatchHandlerMap
from shared.db import transaction_connection
from shared.envelope import Envelope
from shared.erasure import customer_hash
from shared.topics import LOYALTY_ACCOUNTS

_LOCK_MEMBERS = """
    SELECT m.customer_id, m.points, m.tier,
           (SELECT coalesce(sum(l.qualifying), 0) FROM ledger_entries l
            WHERE l.customer_id = m.customer_id AND l.qualifying <> 0 AND l.qualifying_at > $2) AS qualifying
    FROM members m WHERE m.customer_id = ANY($1::text[])
    ORDER BY m.customer_id
    FOR UPDATE OF m
"""
_ORDER_STATE = """
    SELECT k.customer_id, k.order_id,
           EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = k.customer_id AND o.order_id = k.order_id) AS known,
           EXISTS (SELECT 1 FROM refunds r WHERE r.customer_id = k.customer_id AND r.order_id = k.order_id
                   AND r.state = 'pending') AS waiting
    FROM unnest($1::text[], $2::text[]) AS k(customer_id, order_id)
"""
_INSERT_ORDERS = """
    INSERT INTO orders (customer_id, order_id, currency, total, occurred_at, raw_points, points, unit_points,
                        refunded_raw_points, reversed_points)
    SELECT c, o, cur, t, at, raw, p, u::jsonb, 0, 0
    FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], $6::numeric[],
                $7::bigint[], $8::text[]) AS v(c, o, cur, t, at, raw, p, u)
"""
_INSERT_LOTS = """
    INSERT INTO ledger_entries (customer_id, kind, points, cause_type, cause_id, occurred_at, balance_after,
                                remaining, expires_at, qualifying, qualifying_at, shortfall)
    SELECT c, 'earn', p, 'order', o, at, b, p, x, p, at, 0
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bigint[], $6::timestamptz[])
         AS v(c, o, p, at, b, x)
    RETURNING id, customer_id, cause_id
"""
_UPDATE_MEMBERS = """
    UPDATE members m
    SET points = v.points, tier = v.tier,
        updated_at = CASE WHEN v.credited THEN $6 ELSE m.updated_at END,
        tier_changed_at = CASE WHEN v.upgraded THEN $6 ELSE m.tier_changed_at END
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bool[], $5::bool[]) AS v(c, points, tier, credited, upgraded)
    WHERE m.customer_id = v.c
"""


@dataclass
class _Member:
    balance: int
    tier: str
    qualifying: int
    credited: bool = False
    upgraded: bool = False


@dataclass(frozen=True)
class _Campaign:
    starts_at: datetime
    ends_at: datetime
    multiplier: Decimal
    segment_key: str | None

    def applies(self, at: datetime, segments: set[str]) -> bool:
        return self.starts_at <= at < self.ends_at and (self.segment_key is None or self.segment_key in segments)


class _RulesMemo:
    """Parsed earning rules by their stored JSON text: a batch reads the row, not the validation cost."""

    def __init__(self, fallback: EarningRules | None) -> None:
        self.fallback = fallback or EarningRules()
        self._parsed: dict[str, EarningRules] = {}

    def parse(self, document: str | None) -> EarningRules:
        if document is None:
            return self.fallback
        rules = self._parsed.get(document)
        if rules is None:
            if len(self._parsed) > 64:
                self._parsed.clear()
            rules = self._parsed[document] = EarningRules.model_validate_json(document)
        return rules


def _outbox_row(event_type: str, data: dict[str, Any], now: datetime) -> tuple[str, str, str, str]:
    """An outbox row for loyalty.accounts.v1, the bytes Envelope.encode() would give, without the models."""
    event_id = str(uuid.uuid4())
    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": event_type,
        "time": now,
        "subject": data["customer_id"],
        "datacontenttype": "application/json",
        "data": data,
    }
    payload = orjson.dumps(envelope, option=orjson.OPT_UTC_Z).decode()
    return event_id, LOYALTY_ACCOUNTS, data["customer_id"], payload


def batch_handlers_for(program: ProgramFile | None) -> BatchHandlerMap:
    memo = _RulesMemo(program.rules() if program else None)

    async def credit_purchases(session: AsyncSession, events: Sequence[Envelope]) -> None:
        await apply_purchases(session, events, program=program, memo=memo)

    async def record_segment_entries(session: AsyncSession, events: Sequence[Envelope]) -> None:
        await handlers.record_segment_changes(session, events, member=True, program=program)

    async def record_segment_exits(session: AsyncSession, events: Sequence[Envelope]) -> None:
        await handlers.record_segment_changes(session, events, member=False)

    batch: dict[str, BatchHandler] = {
        "purchase.completed": credit_purchases,
        "segment.entered": record_segment_entries,
        "segment.exited": record_segment_exits,
    }
    return batch


async def apply_purchases(
    session: AsyncSession, events: Sequence[Envelope], *, program: ProgramFile | None, memo: _RulesMemo | None = None
) -> None:
    if len(events) <= 1:
        for event in events:
            await handlers.credit_purchase(session, event, program=program)
        return
    memo = memo or _RulesMemo(program.rules() if program else None)
    purchases = [PurchaseCompleted.model_validate(event.data) for event in events]
    connection = await transaction_connection(session)
    now = datetime.now(UTC)

    hashes = {p.customer_id: customer_hash(p.customer_id) for p in purchases}
    erased: dict[str, datetime] = {
        row["customer_hash"]: row["requested_at"]
        for row in await connection.fetch(
            "SELECT customer_hash, requested_at FROM erased_customers WHERE customer_hash = ANY($1::text[])",
            list(set(hashes.values())),
        )
    }
    live = [  # as service.erased_before: events from before an erasure are dropped
        p for p in purchases if not (hashes[p.customer_id] in erased and p.occurred_at <= erased[hashes[p.customer_id]])
    ]
    if not live:
        return
    customers = sorted({p.customer_id for p in live})

    program_row = await connection.fetchrow("SELECT document::text AS document, version FROM earning_rules")
    rules = memo.parse(program_row["document"] if program_row else None)
    version = int(program_row["version"]) if program_row else 0
    campaigns = [
        _Campaign(row["starts_at"], row["ends_at"], row["multiplier"], row["segment_key"])
        for row in await connection.fetch("SELECT starts_at, ends_at, multiplier, segment_key FROM campaigns")
    ]
    file_campaigns = (
        [_Campaign(c.starts_at, c.ends_at, c.multiplier, c.segment_key) for c in program.campaigns]
        if program is not None and version == 0
        else []
    )

    await connection.execute(
        "INSERT INTO members (customer_id, points, tier) SELECT unnest($1::text[]), 0, 'bronze' ON CONFLICT DO NOTHING",
        customers,
    )
    since = add_months(now, -rules.qualifying_window_months)
    members = {
        row["customer_id"]: _Member(int(row["points"]), str(row["tier"]), int(row["qualifying"]))
        for row in await connection.fetch(_LOCK_MEMBERS, customers, since)
    }
    keys = list(dict.fromkeys((p.customer_id, p.order_id) for p in live))
    known: set[tuple[str, str]] = set()
    delegated: set[str] = set()
    for row in await connection.fetch(_ORDER_STATE, [c for c, _ in keys], [o for _, o in keys]):
        if row["known"]:
            known.add((row["customer_id"], row["order_id"]))
        elif row["waiting"]:
            delegated.add(row["customer_id"])  # its refunds are applied by the per-event path
    segments: dict[str, set[str]] = {}
    if any(c.segment_key for c in (*campaigns, *file_campaigns)):
        for row in await connection.fetch(
            "SELECT customer_id, segment_key FROM segment_memberships WHERE customer_id = ANY($1::text[]) AND member",
            customers,
        ):
            segments.setdefault(row["customer_id"], set()).add(row["segment_key"])

    def campaign_multiplier(customer_id: str, at: datetime) -> Decimal:
        theirs = segments.get(customer_id, set())
        multipliers = [c.multiplier for c in campaigns if c.applies(at, theirs)]
        if not multipliers:
            multipliers = [c.multiplier for c in file_campaigns if c.applies(at, theirs)]
        return max(multipliers, default=Decimal(1))

    orders: list[tuple[Any, ...]] = []
    lots: list[tuple[Any, ...]] = []
    # Outgoing events in the order one-by-one application would write them; earned ones wait for entry ids.
    outgoing: list[tuple[str, dict[str, Any]]] = []
    ranks = {tier.name: rank for rank, tier in reversed(list(enumerate(rules.tiers)))}
    for purchase in live:
        customer_id = purchase.customer_id
        key = (customer_id, purchase.order_id)
        if customer_id in delegated or key in known:
            continue
        known.add(key)  # a second purchase of the same order in this batch earns nothing
        member = members[customer_id]
        multiplier = campaign_multiplier(customer_id, purchase.occurred_at)
        earned = purchase_earning(purchase, rules, tier=member.tier, campaign_multiplier=multiplier)
        orders.append(
            (
                customer_id,
                purchase.order_id,
                purchase.currency,
                purchase.total,
                purchase.occurred_at,
                earned.raw_points,
                earned.points,
                orjson.dumps(earned.unit_points).decode(),
            )
        )
        if earned.points > 0:
            member.balance += earned.points
            member.credited = True
            if purchase.occurred_at > since:
                member.qualifying += earned.points
            lots.append(
                (
                    customer_id,
                    purchase.order_id,
                    earned.points,
                    purchase.occurred_at,
                    member.balance,
                    lot_expiry(rules, purchase.occurred_at),
                )
            )
            outgoing.append(
                (
                    POINTS_EARNED,
                    {  # PointsEarned's fields, in order; entry_id is known once the entry is written
                        "customer_id": customer_id,
                        "points": earned.points,
                        "balance": member.balance,
                        "cause_type": "order",
                        "cause_id": purchase.order_id,
                        "entry_id": 0,
                        "occurred_at": purchase.occurred_at,
                    },
                )
            )
        target = rules.tier_for(member.qualifying).name
        if ranks.get(target, 0) > ranks.get(member.tier, 0):
            outgoing.append(
                (
                    TIER_CHANGED,
                    {  # TierChanged's fields, in order
                        "customer_id": customer_id,
                        "from_tier": member.tier,
                        "to_tier": target,
                        "qualifying_points": member.qualifying,
                        "occurred_at": now,
                    },
                )
            )
            member.tier, member.upgraded = target, True

    if orders:
        await connection.execute(_INSERT_ORDERS, *(list(column) for column in zip(*orders, strict=True)))
    if lots:
        written = await connection.fetch(_INSERT_LOTS, *(list(column) for column in zip(*lots, strict=True)))
        entry_ids = {(row["customer_id"], row["cause_id"]): int(row["id"]) for row in written}
        for event_type, data in outgoing:
            if event_type == POINTS_EARNED:
                data["entry_id"] = entry_ids[(data["customer_id"], data["cause_id"])]
    changed = [(c, m) for c, m in members.items() if m.credited or m.upgraded]
    if changed:
        await connection.execute(
            _UPDATE_MEMBERS,
            [c for c, _ in changed],
            [m.balance for _, m in changed],
            [m.tier for _, m in changed],
            [m.credited for _, m in changed],
            [m.upgraded for _, m in changed],
            now,
        )
    if outgoing:
        await connection.execute(
            "INSERT INTO outbox (event_id, topic, key, payload)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
            *(list(column) for column in zip(*(_outbox_row(t, data, now) for t, data in outgoing), strict=True)),
        )
    for event in events:
        if event.data.get("customer_id") in delegated:
            await handlers.credit_purchase(session, event, program=program)
