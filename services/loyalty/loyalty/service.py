"""Loyalty domain operations on the ledger. They never commit: the request or the consumed message does.

Every change of a balance locks the member row first (SELECT ... FOR UPDATE), then writes one ledger
entry and the new balance in the same transaction, so the balance is always the sum of the entries.
Credits are lots; debits (redemptions, reversals, expiry, negative adjustments) take from the lots
that expire first, so the open lots always add up to the balance.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from loyalty import rules as earning
from loyalty.events import (
    ErasureConfirmed,
    PointsEarned,
    PointsExpired,
    PointsRedeemed,
    PointsReversed,
    PurchaseCompleted,
    PurchaseRefunded,
    TierChanged,
    envelope_for,
    erasure_confirmed,
)
from loyalty.models import IdempotencyKey, LedgerEntry, Member, Order, Refund, SegmentMembership
from loyalty.rules import EarningRules, ProgramFile
from shared.db import transaction_connection
from shared.erasure import erased_at, remember_erasure
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import ERASURE_CONFIRMATIONS, LOYALTY_ACCOUNTS


class MemberNotFound(LookupError):
    pass


class InsufficientPoints(Exception):
    def __init__(self, balance: int, requested: int) -> None:
        super().__init__(f"balance {balance} is below {requested}")
        self.balance = balance
        self.requested = requested


@dataclass(frozen=True)
class Movement:
    """A ledger entry just written and the balance after it."""

    customer_id: str
    entry_id: int
    cause_id: str
    points: int
    balance: int
    created_at: datetime


def add_months(moment: datetime, months: int) -> datetime:
    """Same day and time `months` later, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    next_month = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=moment.tzinfo)
    last_day = (next_month - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def lot_expiry(rules: EarningRules, earned_at: datetime) -> datetime | None:
    return add_months(earned_at, rules.expiry_months) if rules.expiry_months else None


async def publish(session: AsyncSession, *events: Any) -> None:
    await add_to_outbox(session, [OutgoingMessage(LOYALTY_ACCOUNTS, e.customer_id, envelope_for(e)) for e in events])


async def enroll(session: AsyncSession, *, customer_id: str) -> None:
    await session.execute(pg_insert(Member).values(customer_id=customer_id).on_conflict_do_nothing())


async def get_member(session: AsyncSession, *, customer_id: str) -> Member | None:
    return (await session.execute(select(Member).where(Member.customer_id == customer_id))).scalar_one_or_none()


async def _lock_member(session: AsyncSession, customer_id: str) -> tuple[int, str] | None:
    """(balance, tier) of the member, its row locked until the transaction ends."""
    row = (
        await session.execute(
            select(Member.points, Member.tier).where(Member.customer_id == customer_id).with_for_update()
        )
    ).first()
    return (int(row.points), str(row.tier)) if row else None


async def _set_balance(session: AsyncSession, customer_id: str, balance: int) -> datetime:
    now = datetime.now(UTC)
    await session.execute(
        update(Member).where(Member.customer_id == customer_id).values(points=balance, updated_at=now)
    )
    return now


_CONSUME_OLDEST_LOTS = text(
    """
    WITH lots AS (
        SELECT id, remaining,
               sum(remaining) OVER (ORDER BY expires_at NULLS LAST, id) - remaining AS before
        FROM ledger_entries
        WHERE customer_id = :customer_id AND remaining > 0
    )
    UPDATE ledger_entries e
    SET remaining = e.remaining - LEAST(lots.remaining, :points - lots.before)
    FROM lots
    WHERE e.id = lots.id AND lots.before < :points
    """
)


async def _consume_lots(session: AsyncSession, customer_id: str, points: int) -> None:
    """Take `points` from the lots expiring first (FIFO); the member row is already locked."""
    if points > 0:
        await session.execute(_CONSUME_OLDEST_LOTS, {"customer_id": customer_id, "points": points})


async def _write_entry(session: AsyncSession, **values: Any) -> int | None:
    """Insert a ledger entry unless its cause already has one; returns its id."""
    statement = (
        pg_insert(LedgerEntry)
        .values(**values)
        .on_conflict_do_nothing(constraint="ledger_entries_one_per_cause")
        .returning(LedgerEntry.id)
    )
    entry_id = (await session.execute(statement)).scalar()
    return int(entry_id) if entry_id is not None else None


async def credit(
    session: AsyncSession,
    *,
    customer_id: str,
    kind: str,
    points: int,
    cause_type: str,
    cause_id: str,
    occurred_at: datetime,
    expires_at: datetime | None,
    qualifying: int = 0,
    reason: str | None = None,
) -> Movement | None:
    """Add a lot of points once per cause; None when this cause was already credited (or 0 points)."""
    locked = await _lock_member(session, customer_id)
    if locked is None:
        raise MemberNotFound(customer_id)
    if points <= 0:
        return None
    balance = locked[0] + points
    entry_id = await _write_entry(
        session,
        customer_id=customer_id,
        kind=kind,
        points=points,
        cause_type=cause_type,
        cause_id=cause_id,
        occurred_at=occurred_at,
        balance_after=balance,
        reason=reason,
        remaining=points,
        expires_at=expires_at,
        qualifying=qualifying,
        qualifying_at=occurred_at if qualifying else None,
    )
    if entry_id is None:
        return None
    now = await _set_balance(session, customer_id, balance)
    await publish(
        session,
        PointsEarned(
            customer_id=customer_id,
            points=points,
            balance=balance,
            cause_type=cause_type,
            cause_id=cause_id,
            entry_id=entry_id,
            occurred_at=occurred_at,
        ),
    )
    return Movement(customer_id, entry_id, cause_id, points, balance, now)


async def _record_debit(
    session: AsyncSession, *, customer_id: str, points: int, balance_after: int, **entry: Any
) -> int | None:
    """Write a debit entry once per cause and take its points from the oldest lots."""
    entry_id = await _write_entry(
        session, customer_id=customer_id, points=-points, balance_after=balance_after, **entry
    )
    if entry_id is not None:
        await _consume_lots(session, customer_id, points)
    return entry_id


async def _debit(
    session: AsyncSession,
    *,
    customer_id: str,
    balance: int,
    kind: str,
    points: int,
    cause_type: str,
    cause_id: str,
    occurred_at: datetime,
    reason: str | None = None,
    qualifying: int = 0,
    qualifying_at: datetime | None = None,
    shortfall: int = 0,
) -> Movement | None:
    """Take `points` (<= balance) from the oldest lots; the caller holds the member lock."""
    new_balance = balance - points
    entry_id = await _record_debit(
        session,
        customer_id=customer_id,
        points=points,
        balance_after=new_balance,
        kind=kind,
        cause_type=cause_type,
        cause_id=cause_id,
        occurred_at=occurred_at,
        reason=reason,
        qualifying=qualifying,
        qualifying_at=qualifying_at,
        shortfall=shortfall,
    )
    if entry_id is None:
        return None
    now = await _set_balance(session, customer_id, new_balance)
    return Movement(customer_id, entry_id, cause_id, points, new_balance, now)


_ID_PREFIXES = {"redemption": "rdm", "adjustment": "adj"}


async def _spend(
    session: AsyncSession, *, customer_id: str, points: int, kind: str, cause_type: str, reason: str
) -> Movement:
    """A debit someone asked for (redemption, staff debit), refused unless the balance covers it.

    One conditional UPDATE takes the member's row lock and checks the balance in the same statement:
    concurrent debits queue on the row, and a refused one never holds the lock across a round trip.
    """
    now = datetime.now(UTC)
    balance = await session.scalar(
        update(Member)
        .where(Member.customer_id == customer_id, Member.points >= points)
        .values(points=Member.points - points, updated_at=now)
        .returning(Member.points)
    )
    if balance is None:
        current = await session.scalar(select(Member.points).where(Member.customer_id == customer_id))
        if current is None:
            raise MemberNotFound(customer_id)
        raise InsufficientPoints(int(current), points)
    cause_id = f"{_ID_PREFIXES[cause_type]}_{uuid.uuid4().hex}"
    entry_id = await _record_debit(
        session,
        customer_id=customer_id,
        points=points,
        balance_after=balance,
        kind=kind,
        cause_type=cause_type,
        cause_id=cause_id,
        occurred_at=now,
        reason=reason,
    )
    assert entry_id is not None  # a fresh cause id never conflicts
    return Movement(customer_id, entry_id, cause_id, points, int(balance), now)


async def redeem(session: AsyncSession, *, customer_id: str, points: int, reason: str) -> Movement:
    """Spend points; InsufficientPoints (nothing changed) when the balance is short."""
    movement = await _spend(
        session, customer_id=customer_id, points=points, kind="redeem", cause_type="redemption", reason=reason
    )
    await publish(
        session,
        PointsRedeemed(
            customer_id=customer_id,
            points=points,
            balance=movement.balance,
            redemption_id=movement.cause_id,
            reason=reason,
            entry_id=movement.entry_id,
            occurred_at=movement.created_at,
        ),
    )
    return movement


async def adjust(
    session: AsyncSession, *, customer_id: str, points: int, reason: str, fallback: EarningRules | None = None
) -> Movement:
    """Staff correction: a credit is a new lot (points.earned), a debit takes from the oldest (points.reversed)."""
    if points > 0:
        now = datetime.now(UTC)
        rules, _ = await earning.current_rules(session, fallback=fallback)
        movement = await credit(
            session,
            customer_id=customer_id,
            kind="adjust",
            points=points,
            cause_type="adjustment",
            cause_id=f"adj_{uuid.uuid4().hex}",
            occurred_at=now,
            expires_at=lot_expiry(rules, now),
            reason=reason,
        )
        assert movement is not None
        return movement
    debit = await _spend(
        session, customer_id=customer_id, points=-points, kind="adjust", cause_type="adjustment", reason=reason
    )
    await publish(session, _reversed(debit, "adjustment", debit.created_at))
    return debit


def _reversed(movement: Movement, cause_type: str, occurred_at: datetime, shortfall: int = 0) -> PointsReversed:
    return PointsReversed(
        customer_id=movement.customer_id,
        points=movement.points,
        balance=movement.balance,
        cause_type=cause_type,
        cause_id=movement.cause_id,
        entry_id=movement.entry_id,
        occurred_at=occurred_at,
        shortfall=shortfall,
    )


async def credit_purchase(session: AsyncSession, *, purchase: PurchaseCompleted, program: ProgramFile | None) -> None:
    """Earn an order's points once, then apply any refund of it that arrived first."""
    customer_id = purchase.customer_id
    await enroll(session, customer_id=customer_id)
    locked = await _lock_member(session, customer_id)
    assert locked is not None
    rules, version = await earning.current_rules(session, fallback=program.rules() if program else None)
    multiplier = await earning.campaign_multiplier(
        session, customer_id=customer_id, at=purchase.occurred_at, fallback=program if version == 0 else None
    )
    earned = earning.purchase_earning(purchase, rules, tier=locked[1], campaign_multiplier=multiplier)
    order = (
        await session.execute(
            pg_insert(Order)
            .values(
                customer_id=customer_id,
                order_id=purchase.order_id,
                currency=purchase.currency,
                total=purchase.total,
                occurred_at=purchase.occurred_at,
                raw_points=earned.raw_points,
                points=earned.points,
                unit_points=earned.unit_points,
                refunded_raw_points=Decimal(0),
                reversed_points=0,
            )
            .on_conflict_do_nothing()
            .returning(Order)
        )
    ).scalar_one_or_none()
    if order is None:
        return  # This order already earned.
    await credit(
        session,
        customer_id=customer_id,
        kind="earn",
        points=earned.points,
        cause_type="order",
        cause_id=purchase.order_id,
        occurred_at=purchase.occurred_at,
        expires_at=lot_expiry(rules, purchase.occurred_at),
        qualifying=earned.points,
    )
    pending = (
        await session.execute(
            select(Refund)
            .where(Refund.customer_id == customer_id, Refund.order_id == purchase.order_id, Refund.state == "pending")
            .order_by(Refund.occurred_at, Refund.refund_id)
        )
    ).scalars()
    for refund in list(pending):
        refund.state = "applied"
        await _reverse_refund(session, order, PurchaseRefunded.model_validate(refund.data))
    await upgrade_tier(session, customer_id=customer_id, rules=rules)


async def record_refund(session: AsyncSession, *, refund: PurchaseRefunded) -> None:
    """Reverse a refund's points once; a refund of an order not seen yet waits for its purchase."""
    order = (
        await session.execute(
            select(Order)
            .where(Order.customer_id == refund.customer_id, Order.order_id == refund.order_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    seen = (
        await session.execute(
            pg_insert(Refund)
            .values(
                customer_id=refund.customer_id,
                refund_id=refund.refund_id,
                order_id=refund.order_id,
                occurred_at=refund.occurred_at,
                data=refund.model_dump(mode="json"),
                state="applied" if order else "pending",
            )
            .on_conflict_do_nothing()
            .returning(Refund.refund_id)
        )
    ).first()
    if seen is not None and order is not None:
        await _reverse_refund(session, order, refund)


async def _reverse_refund(session: AsyncSession, order: Order, refund: PurchaseRefunded) -> None:
    """Take back the refunded share of the order's points; what was already spent is the shortfall.

    The order keeps the running sum of refunded raw points and rounds it down once, so refunds in
    any order and any split reverse the same total, never more than the order earned.
    """
    order.refunded_raw_points += earning.refund_raw_points(
        refund, order_total=order.total, order_raw_points=order.raw_points, unit_points=order.unit_points
    )
    target = min(order.points, earning.round_points(order.refunded_raw_points))
    due = target - order.reversed_points
    order.reversed_points = target
    await session.flush()
    if due <= 0:
        return
    locked = await _lock_member(session, refund.customer_id)
    assert locked is not None
    taken = min(due, locked[0])
    movement = await _debit(
        session,
        customer_id=refund.customer_id,
        balance=locked[0],
        kind="reverse",
        points=taken,
        cause_type="refund",
        cause_id=refund.refund_id,
        occurred_at=refund.occurred_at,
        qualifying=-due,
        qualifying_at=order.occurred_at,
        shortfall=due - taken,
    )
    if movement is not None:
        await publish(session, _reversed(movement, "refund", refund.occurred_at, due - taken))


async def qualifying_points(session: AsyncSession, *, customer_id: str, rules: EarningRules, now: datetime) -> int:
    since = add_months(now, -rules.qualifying_window_months)
    total = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.qualifying), 0)).where(
            LedgerEntry.customer_id == customer_id, LedgerEntry.qualifying != 0, LedgerEntry.qualifying_at > since
        )
    )
    return int(total or 0)


async def _change_tier(
    session: AsyncSession, *, customer_id: str, from_tier: str, to_tier: str, qualifying: int, now: datetime
) -> None:
    await session.execute(
        update(Member).where(Member.customer_id == customer_id).values(tier=to_tier, tier_changed_at=now)
    )
    await publish(
        session,
        TierChanged(
            customer_id=customer_id, from_tier=from_tier, to_tier=to_tier, qualifying_points=qualifying, occurred_at=now
        ),
    )


async def upgrade_tier(session: AsyncSession, *, customer_id: str, rules: EarningRules) -> None:
    """Upgrades happen at once; downgrades wait for the scheduled review."""
    now = datetime.now(UTC)
    locked = await _lock_member(session, customer_id)
    assert locked is not None
    qualifying = await qualifying_points(session, customer_id=customer_id, rules=rules, now=now)
    target = rules.tier_for(qualifying).name
    if rules.rank(target) > rules.rank(locked[1]):
        await _change_tier(
            session, customer_id=customer_id, from_tier=locked[1], to_tier=target, qualifying=qualifying, now=now
        )


_TIER_REVIEW = text(
    """
    SELECT m.customer_id, m.tier, coalesce(q.points, 0) AS qualifying
    FROM members m
    LEFT JOIN (
        SELECT customer_id, sum(qualifying) AS points FROM ledger_entries
        WHERE qualifying <> 0 AND qualifying_at > :since GROUP BY customer_id
    ) q ON q.customer_id = m.customer_id
    WHERE m.erased_at IS NULL AND (m.tier <> :base_tier OR coalesce(q.points, 0) >= :second_threshold)
    ORDER BY m.customer_id
    """
)


async def review_tiers(
    session: AsyncSession, *, now: datetime, batch_size: int, fallback: EarningRules | None = None
) -> int:
    """Scheduled: move every member to the tier its rolling qualifying points support (downgrades)."""
    rules, _ = await earning.current_rules(session, fallback=fallback)
    second = rules.tiers[1].threshold if len(rules.tiers) > 1 else 2**62
    params = {"since": add_months(now, -rules.qualifying_window_months), "base_tier": rules.tiers[0].name}
    rows = (await session.execute(_TIER_REVIEW, params | {"second_threshold": second})).all()
    changed = 0
    for row in rows:
        target = rules.tier_for(int(row.qualifying)).name
        if target == row.tier or changed >= batch_size:
            continue
        locked = await _lock_member(session, row.customer_id)
        if locked is None or locked[1] != row.tier:
            continue
        await _change_tier(
            session,
            customer_id=row.customer_id,
            from_tier=row.tier,
            to_tier=target,
            qualifying=int(row.qualifying),
            now=now,
        )
        changed += 1
    return changed


async def expire_lots(session: AsyncSession, *, now: datetime, batch_size: int) -> int:
    """Scheduled: each lot past its expiry loses what is left of it (points.expired); returns lots expired."""
    customers = (
        await session.execute(
            select(LedgerEntry.customer_id)
            .where(LedgerEntry.remaining > 0, LedgerEntry.expires_at <= now)
            .group_by(LedgerEntry.customer_id)
            .order_by(LedgerEntry.customer_id)
            .limit(batch_size)
        )
    ).scalars()
    expired = 0
    for customer_id in list(customers):
        expired += await _expire_member_lots(session, customer_id=customer_id, now=now)
    return expired


async def _expire_member_lots(session: AsyncSession, *, customer_id: str, now: datetime) -> int:
    locked = await _lock_member(session, customer_id)
    if locked is None:
        return 0
    balance = locked[0]
    lots = (
        await session.execute(
            select(LedgerEntry.id, LedgerEntry.remaining, LedgerEntry.expires_at)
            .where(LedgerEntry.customer_id == customer_id, LedgerEntry.remaining > 0, LedgerEntry.expires_at <= now)
            .order_by(LedgerEntry.expires_at, LedgerEntry.id)
        )
    ).all()
    events = []
    for lot in lots:
        balance -= lot.remaining
        entry_id = await _write_entry(
            session,
            customer_id=customer_id,
            kind="expire",
            points=-lot.remaining,
            cause_type="lot",
            cause_id=str(lot.id),
            occurred_at=lot.expires_at,
            balance_after=balance,
        )
        assert entry_id is not None  # a lot with points left has not expired before
        await session.execute(update(LedgerEntry).where(LedgerEntry.id == lot.id).values(remaining=0))
        events.append(
            PointsExpired(
                customer_id=customer_id,
                points=lot.remaining,
                balance=balance,
                entry_id=entry_id,
                occurred_at=lot.expires_at,
                lot_id=lot.id,
            )
        )
    if events:
        await _set_balance(session, customer_id, balance)
        await publish(session, *events)
    return len(events)


async def record_segment_change(
    session: AsyncSession, *, customer_id: str, segment_key: str, member: bool, occurred_at: datetime
) -> None:
    """Keep the latest membership by occurred_at, whatever order the events arrive in."""
    await record_segment_changes(session, changes=[(customer_id, segment_key, member, occurred_at)])


async def record_segment_changes(session: AsyncSession, *, changes: Sequence[tuple[str, str, bool, datetime]]) -> None:
    """(customer, segment key, member, occurred_at) for a batch: the latest per pair, in one statement.

    Within the batch, as across batches, a later change replaces an earlier one and at equal times
    the first one stays.
    """
    latest: dict[tuple[str, str], tuple[bool, datetime]] = {}
    for customer_id, segment_key, member, occurred_at in changes:
        held = latest.get((customer_id, segment_key))
        if held is None or occurred_at > held[1]:
            latest[(customer_id, segment_key)] = (member, occurred_at)
    if not latest:
        return
    rows = sorted(latest.items())
    connection = await transaction_connection(session)
    # Arrays, not a VALUES list: SQLAlchemy compiled a multi-row VALUES again for every batch size
    # (12 % of the worker's CPU while segments was busy).
    await connection.execute(
        "INSERT INTO segment_memberships (customer_id, segment_key, member, changed_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::timestamptz[])"
        " ON CONFLICT (customer_id, segment_key) DO UPDATE"
        " SET member = excluded.member, changed_at = excluded.changed_at"
        " WHERE segment_memberships.changed_at < excluded.changed_at",
        [c for (c, _), _ in rows],
        [k for (_, k), _ in rows],
        [member for _, (member, _) in rows],
        [at for _, (_, at) in rows],
    )


async def forget_segment_memberships(session: AsyncSession, *, pairs: set[tuple[str, str]]) -> None:
    """Delete the (customer, segment key) rows, in one statement."""
    if pairs:
        await session.execute(
            delete(SegmentMembership).where(
                tuple_(SegmentMembership.customer_id, SegmentMembership.segment_key).in_(sorted(pairs))
            )
        )


async def credit_segment_bonus(
    session: AsyncSession, *, customer_id: str, segment_key: str, occurred_at: datetime, rules: EarningRules
) -> None:
    """The bonus for entering a segment, once per entry (an entry is identified by its time)."""
    bonus = rules.segment_bonuses.get(segment_key, 0)
    if bonus <= 0:
        return
    await enroll(session, customer_id=customer_id)
    await credit(
        session,
        customer_id=customer_id,
        kind="earn",
        points=bonus,
        cause_type="segment",
        cause_id=f"{segment_key}@{occurred_at.astimezone(UTC).isoformat()}",
        occurred_at=occurred_at,
        expires_at=lot_expiry(rules, occurred_at),
    )


async def credit_feedback(
    session: AsyncSession, *, customer_id: str, order_id: str, occurred_at: datetime, rules: EarningRules
) -> None:
    """Points for feedback on an order, once per order however many times it is rated."""
    if rules.feedback_points <= 0:
        return
    await enroll(session, customer_id=customer_id)
    await credit(
        session,
        customer_id=customer_id,
        kind="earn",
        points=rules.feedback_points,
        cause_type="feedback",
        cause_id=order_id,
        occurred_at=occurred_at,
        expires_at=lot_expiry(rules, occurred_at),
    )


async def erased_before(session: AsyncSession, *, customer_id: str, occurred_at: datetime | None) -> bool:
    """Whether this customer was erased after `occurred_at` (or at all, for events without a time)."""
    requested_at = await erased_at(session, customer_id=customer_id)
    return requested_at is not None and (occurred_at is None or occurred_at <= requested_at)


def erased_member_id(customer_id: str) -> str:
    """A salted hash whose salt is thrown away: the token cannot be traced back to the customer."""
    return "erased-" + hashlib.sha256(os.urandom(16) + customer_id.encode()).hexdigest()[:40]


async def erase_member(
    session: AsyncSession, *, customer_id: str, request_id: str, requested_at: datetime | None = None
) -> str | None:
    """Anonymise the member: its ledger stays (sums hold) under an untraceable id; notes are dropped.

    Returns the new id (None when loyalty held no member); the confirmation is published either way.
    """
    token = erased_member_id(customer_id)
    now = datetime.now(UTC)
    # Remembered so that this customer's older events, arriving later, do not bring the data back.
    await remember_erasure(session, customer_id=customer_id, requested_at=requested_at or now)
    renamed = (
        await session.execute(
            update(Member)
            .where(Member.customer_id == customer_id)
            .values(customer_id=token, erased_at=now, updated_at=now)
            .returning(Member.customer_id)
        )
    ).first()
    if renamed is not None:
        await session.execute(update(LedgerEntry).where(LedgerEntry.customer_id == token).values(reason=None))
    # Stored answers name the customer; pending refunds and memberships are not needed for the sums.
    for table in (IdempotencyKey, Refund, SegmentMembership):
        await session.execute(delete(table).where(table.customer_id == customer_id))
    confirmation = ErasureConfirmed(request_id=request_id, customer_id=customer_id, service="loyalty", confirmed_at=now)
    await add_to_outbox(
        session, [OutgoingMessage(ERASURE_CONFIRMATIONS["loyalty"], customer_id, erasure_confirmed(confirmation))]
    )
    return token if renamed is not None else None
