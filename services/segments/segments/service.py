"""Segments' domain operations. They never commit: the request or the consumed message does."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import orjson
from sqlalchemy import Row, String, delete, literal, select, text, union_all
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from segments import clusters, clv, pg, rfm, rules
from segments.config import SegmentsSettings
from segments.events import ErasureRequested, ProfileUpdated, PurchaseCompleted, PurchaseRefunded
from segments.facts import CustomerFacts, build_facts_table, facts_sql, load_customer_facts
from segments.membership import (
    BASE_LOCK,
    Changes,
    apply_customer_memberships,
    apply_customers_memberships,
    apply_memberships,
    lock_for_one_customer,
)
from segments.models import (
    ClusterModel,
    ClvModel,
    Customer,
    CustomerProfile,
    MembershipChange,
    Order,
    Prediction,
    Refund,
    RfmCutPoints,
    RfmScore,
    Segment,
    SegmentMember,
    SegmentSize,
)
from segments.recompute import (
    UPSERT_PREDICTIONS,
    clustering_of,
    clv_model_row,
    fact_arrays,
    latest_cluster_model,
    prediction_params,
    rule_targets,
    store_cut_points,
)
from shared.db import transaction_connection
from shared.envelope import new_event
from shared.outbox import OutgoingMessage, add_to_outbox
from shared.topics import ERASURE_CONFIRMATIONS

NO_TARGETS = "SELECT NULL::text AS segment_id, NULL::text AS customer_id, NULL::text AS reason WHERE false"


class SegmentConflict(Exception):
    """The change is not allowed for this segment (built-in, deleted, or its key is taken)."""


# What a batch's context held last, by content: the md5 of the rows they were loaded from (read
# under the lock, in the statement that reads the batch's facts). A batch whose rows are unchanged
# reuses them instead of four queries; any change to a row (a recompute, a segment edit) changes
# its md5 and it is loaded again. A missing row (no model yet) is a version too ("none"), so a young
# system does not look for its models in every batch. Only read, never written: loaded with
# expire_on_commit off, they stay readable once detached.
_CONTEXT_VERSIONS = """
    SELECT (SELECT md5(string_agg(s::text, ',' ORDER BY s.id)) FROM segments s WHERE s.status = 'active') AS segments,
           coalesce((SELECT md5(c::text) FROM rfm_cut_points c ORDER BY c.id DESC LIMIT 1), 'none') AS cuts,
           coalesce((SELECT md5(m::text) FROM clv_models m WHERE m.active ORDER BY m.id DESC LIMIT 1), 'none') AS clv,
           coalesce((SELECT md5(k::text) FROM cluster_models k ORDER BY k.id DESC LIMIT 1), 'none') AS cluster
"""
_VERSION_NAMES = ("segments", "cuts", "clv", "cluster")
_CONTEXT_CACHE: dict[str, tuple[str, Any]] = {}
# Parsed rules and their descriptions, by segment id and node limit, for the segments cached above
# (dropped with them when their version changes).
_RULES_CACHE: dict[tuple[str, int], tuple[rules.Rule, str]] = {}


@dataclass(frozen=True)
class ActiveSegment:
    """What the real-time path reads of an active segment: plain values (an ORM attribute read costs
    ~0.3 us, and every customer of a batch reads every segment's)."""

    id: str
    key: str
    name: str
    kind: str
    rule: Any


class BatchContext:
    """What every customer of one batch of events reads alike, loaded once per batch.

    The lock, the active segments, the RFM cut-points and the two models do not change while a
    consumer applies one batch (only a full recompute or a segment edit changes them, and both take
    the base lock exclusively, which this batch holds shared). A context lives for one handler
    call: the consumer's isolated pass (savepoints) calls handlers with a batch of one, so nothing
    cached outlives a rolled-back savepoint. Across batches they are reused while the md5 of their
    rows, read under the lock, is unchanged (`_CONTEXT_CACHE`).
    """

    def __init__(self) -> None:
        self.locked = False
        self._conn: asyncpg.Connection | None = None
        self._versions: dict[str, str | None] = {}
        self._loaded: dict[str, Any] = {}
        self._rules: dict[tuple[str, int], tuple[rules.Rule, str]] = {}

    def rule_of(self, segment: ActiveSegment, max_nodes: int) -> tuple[rules.Rule, str]:
        """A rule segment's parsed rule and its description, parsed once while the segments are unchanged."""
        key = (segment.id, max_nodes)
        if key not in self._rules:
            parsed = rules.parse_rule(segment.rule, max_nodes=max_nodes)
            self._rules[key] = (parsed, rules.describe(parsed))
        return self._rules[key]

    async def connection(self, session: AsyncSession) -> asyncpg.Connection:
        """The asyncpg connection of the session's transaction (looked up once per batch)."""
        if self._conn is None:
            self._conn = await transaction_connection(session)
        return self._conn

    async def lock(self, session: AsyncSession) -> None:
        if not self.locked:
            await lock_for_one_customer(session)
            self.locked = True

    @property
    def has_versions(self) -> bool:
        return bool(self._versions)

    def set_versions(self, row: Mapping[str, Any]) -> None:
        """The md5s read under the lock (in a statement of its own after the lock: its snapshot sees
        whatever committed before)."""
        self._versions = {name: row[name] for name in _VERSION_NAMES}
        cached = _CONTEXT_CACHE.get("segments")
        if cached is None or cached[0] != self._versions["segments"]:
            _RULES_CACHE.clear()  # the segments are loaded again: so are their rules
        self._rules = _RULES_CACHE

    async def _once(self, name: str, load: Callable[[], Awaitable[Any]]) -> Any:
        if name not in self._loaded:
            version = self._versions.get(name)
            cached = _CONTEXT_CACHE.get(name)
            if version is not None and cached is not None and cached[0] == version:
                self._loaded[name] = cached[1]
            else:
                self._loaded[name] = await load()
                if version is not None:
                    _CONTEXT_CACHE[name] = (version, self._loaded[name])
        return self._loaded[name]

    async def active_segments(self, session: AsyncSession) -> Sequence[ActiveSegment]:
        async def load() -> Sequence[ActiveSegment]:
            loaded = (await session.execute(select(Segment).where(Segment.status == "active"))).scalars().all()
            return [ActiveSegment(s.id, s.key, s.name, s.kind, s.rule) for s in loaded]

        result: Sequence[ActiveSegment] = await self._once("segments", load)
        return result

    async def cut_points(self, session: AsyncSession) -> RfmCutPoints | None:
        async def load() -> RfmCutPoints | None:
            statement = select(RfmCutPoints).order_by(RfmCutPoints.id.desc()).limit(1)
            return (await session.execute(statement)).scalar_one_or_none()

        result: RfmCutPoints | None = await self._once("cuts", load)
        return result

    def stored_cut_points(self, cuts: RfmCutPoints | None) -> None:
        self._loaded["cuts"] = cuts

    async def clv_model(self, session: AsyncSession) -> ClvModel | None:
        result: ClvModel | None = await self._once("clv", lambda: active_clv_model(session))
        return result

    async def cluster_model(self, session: AsyncSession) -> ClusterModel | None:
        result: ClusterModel | None = await self._once("cluster", lambda: latest_cluster_model(session))
        return result


# --- inputs -----------------------------------------------------------------------------------
# Each takes a batch (a consumed batch of one event type, or a list of one): the facts go in with
# one statement, then every customer whose facts really changed is re-scored once. A batch ends in
# the state its events one by one would leave; a customer who would enter and leave a segment within
# one batch publishes neither (membership events describe the state after each batch).


# Every fact statement also takes the base lock (shared) and records its customers (sorted: one
# lock order for every writer), in the same statement: two round trips less per batch. The facts
# need not be written under the lock; what is read under it (the refresh) comes in later statements,
# whose snapshots see whatever committed before the lock was granted.
#
# It also sets the plan cache mode of the batch's statements (`_plan_cache_mode`): the generic plan
# PostgreSQL settles on for the refresh's statements estimates every array parameter at 10
# elements, and for a burst of 200 profiles it ran the diff's anti-joins as nested loops and read
# orders by scans (facts 7.1 ms, scoring 6.8, diff 11.6; planned for the batch 1.8, 2.9, 6.5). A
# small batch keeps the generic plans (planning them each time costs more than it saves).
_LOCK_AND_PLAN = (
    "SELECT pg_advisory_xact_lock_shared(CAST(:base_lock AS bigint)),"
    " set_config('plan_cache_mode', CAST(:plan_cache_mode AS text), true)"
)
_ENSURE_CUSTOMERS = f"""
    WITH locked AS MATERIALIZED ({_LOCK_AND_PLAN}),
    known AS (
        INSERT INTO customers (customer_id) SELECT unnest(CAST(:customer_ids AS text[])) FROM locked
        ON CONFLICT DO NOTHING
    )
"""


def _customer_ids(customer_ids: Sequence[str]) -> list[str]:
    return sorted(set(customer_ids))


PLANNED_BATCH = 32  # customers from which a batch's statements are planned for their parameters


def _plan_cache_mode(customers: int) -> str:
    return "force_custom_plan" if customers >= PLANNED_BATCH else "auto"


# Fact inserts from arrays: one statement text whatever the batch size (a multi-row VALUES would
# be compiled again for every size, which cost more than the insert itself).
_INSERT_ORDERS = (
    _ENSURE_CUSTOMERS
    + """
    INSERT INTO orders (order_id, customer_id, occurred_at, amount, currency)
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:customers AS text[]), CAST(:times AS timestamptz[]),
                         CAST(:amounts AS numeric[]), CAST(:currencies AS text[]))
    ON CONFLICT DO NOTHING RETURNING customer_id
"""
)
_INSERT_REFUNDS = (
    _ENSURE_CUSTOMERS
    + """
    INSERT INTO refunds (refund_id, order_id, customer_id, occurred_at, amount)
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:orders AS text[]), CAST(:customers AS text[]),
                         CAST(:times AS timestamptz[]), CAST(:amounts AS numeric[]))
    ON CONFLICT DO NOTHING RETURNING customer_id
"""
)
_UPSERT_PROFILES = (
    _ENSURE_CUSTOMERS
    + """
    INSERT INTO customer_profiles AS p (customer_id, version, profile, occurred_at, updated_at)
    SELECT u.customer_id, u.version, CAST(u.profile AS jsonb), u.occurred_at, CAST(:now AS timestamptz)
    FROM unnest(CAST(:customers AS text[]), CAST(:versions AS bigint[]), CAST(:profiles AS text[]),
                CAST(:times AS timestamptz[])) AS u(customer_id, version, profile, occurred_at)
    ON CONFLICT (customer_id) DO UPDATE SET
        version = EXCLUDED.version, profile = EXCLUDED.profile, occurred_at = EXCLUDED.occurred_at,
        updated_at = EXCLUDED.updated_at
    WHERE EXCLUDED.version > p.version
    RETURNING p.customer_id
"""
)
_UPSERT_RFM = """
    INSERT INTO rfm_scores (customer_id, as_of, recency_days, frequency, monetary, r_score, f_score, m_score,
                            rfm_segment)
    SELECT u.customer_id, CAST(:as_of AS timestamptz), u.recency_days, u.frequency, u.monetary, u.r, u.f, u.m,
           u.segment
    FROM unnest(CAST(:customers AS text[]), CAST(:recency AS int[]), CAST(:frequency AS int[]),
                CAST(:monetary AS numeric[]), CAST(:r AS smallint[]), CAST(:f AS smallint[]), CAST(:m AS smallint[]),
                CAST(:segments AS text[])) AS u(customer_id, recency_days, frequency, monetary, r, f, m, segment)
    ON CONFLICT (customer_id) DO UPDATE SET
        as_of = EXCLUDED.as_of, recency_days = EXCLUDED.recency_days, frequency = EXCLUDED.frequency,
        monetary = EXCLUDED.monetary, r_score = EXCLUDED.r_score, f_score = EXCLUDED.f_score,
        m_score = EXCLUDED.m_score, rfm_segment = EXCLUDED.rfm_segment
"""


async def _record_new_facts(
    session: AsyncSession,
    *,
    customer_ids: Sequence[str],
    insert_sql: str,
    params: dict[str, Any],
    settings: SegmentsSettings,
    context: BatchContext | None,
) -> Changes:
    """Keep each fact once (its own id is the key), then bring the customers with new facts up to date."""
    if not customer_ids:
        return Changes()
    context = context or BatchContext()
    ids = _customer_ids(customer_ids)
    values = {**params, "customer_ids": ids, "base_lock": BASE_LOCK, "plan_cache_mode": _plan_cache_mode(len(ids))}
    rows = await pg.fetch(await context.connection(session), insert_sql, values)
    context.locked = True
    changed = sorted({row[0] for row in rows})
    return await refresh_customers(session, customer_ids=changed, settings=settings, context=context)


async def record_purchases(
    session: AsyncSession,
    *,
    purchases: Sequence[PurchaseCompleted],
    settings: SegmentsSettings,
    context: BatchContext | None = None,
) -> Changes:
    params = {
        "ids": [p.order_id for p in purchases],
        "customers": [p.customer_id for p in purchases],
        "times": [p.occurred_at for p in purchases],
        "amounts": [p.total for p in purchases],
        "currencies": [p.currency.upper() for p in purchases],
    }
    return await _record_new_facts(
        session,
        customer_ids=[p.customer_id for p in purchases],
        insert_sql=_INSERT_ORDERS,
        params=params,
        settings=settings,
        context=context,
    )


async def record_purchase(
    session: AsyncSession,
    *,
    purchase: PurchaseCompleted,
    settings: SegmentsSettings,
    context: BatchContext | None = None,
) -> Changes:
    return await record_purchases(session, purchases=[purchase], settings=settings, context=context)


async def record_refunds(
    session: AsyncSession,
    *,
    refunds: Sequence[PurchaseRefunded],
    settings: SegmentsSettings,
    context: BatchContext | None = None,
) -> Changes:
    params = {
        "ids": [r.refund_id for r in refunds],
        "orders": [r.order_id for r in refunds],
        "customers": [r.customer_id for r in refunds],
        "times": [r.occurred_at for r in refunds],
        "amounts": [r.amount for r in refunds],
    }
    return await _record_new_facts(
        session,
        customer_ids=[r.customer_id for r in refunds],
        insert_sql=_INSERT_REFUNDS,
        params=params,
        settings=settings,
        context=context,
    )


async def record_refund(
    session: AsyncSession, *, refund: PurchaseRefunded, settings: SegmentsSettings, context: BatchContext | None = None
) -> Changes:
    return await record_refunds(session, refunds=[refund], settings=settings, context=context)


async def record_profiles(
    session: AsyncSession,
    *,
    updates: Sequence[ProfileUpdated],
    settings: SegmentsSettings,
    context: BatchContext | None = None,
) -> Changes:
    """Keep each customer's newest snapshot if it is newer than the one held (stale ones change nothing)."""
    newest: dict[str, ProfileUpdated] = {}
    for update in updates:
        held = newest.get(update.customer_id)
        if held is None or update.version > held.version:
            newest[update.customer_id] = update
    if not newest:
        return Changes()
    chosen = [update for _, update in sorted(newest.items())]
    context = context or BatchContext()
    applied = await pg.fetch(
        await context.connection(session),
        _UPSERT_PROFILES,
        {
            "customers": [u.customer_id for u in chosen],
            "versions": [u.version for u in chosen],
            "profiles": [orjson.dumps(u.profile, default=str).decode() for u in chosen],
            "times": [u.occurred_at for u in chosen],
            "now": datetime.now(UTC),
            "customer_ids": _customer_ids(list(newest)),
            "base_lock": BASE_LOCK,
            "plan_cache_mode": _plan_cache_mode(len(newest)),
        },
    )
    context.locked = True
    changed = sorted({row[0] for row in applied})
    return await refresh_customers(session, customer_ids=changed, settings=settings, context=context)


async def record_profile(
    session: AsyncSession, *, update: ProfileUpdated, settings: SegmentsSettings, context: BatchContext | None = None
) -> Changes:
    return await record_profiles(session, updates=[update], settings=settings, context=context)


async def erase_customer(session: AsyncSession, *, request: ErasureRequested) -> None:
    """Forget the customer: they leave every segment (events published), then their rows go."""
    customer_id = request.customer_id
    await lock_for_one_customer(session)
    current = (
        await session.execute(select(SegmentMember.segment_id).where(SegmentMember.customer_id == customer_id))
    ).scalars()
    await apply_customer_memberships(
        session, customer_id=customer_id, segment_ids=list(current), wanted={}, at=datetime.now(UTC)
    )
    for table in (MembershipChange, Prediction, RfmScore, CustomerProfile, Refund, Order, Customer):
        await session.execute(delete(table).where(table.customer_id == customer_id))
    confirmed = new_event(
        type="erasure.confirmed",
        source="cx.segments",
        subject=customer_id,
        data={
            "request_id": request.request_id,
            "customer_id": customer_id,
            "service": "segments",
            "confirmed_at": datetime.now(UTC).isoformat(),
        },
    )
    await add_to_outbox(session, [OutgoingMessage(ERASURE_CONFIRMATIONS["segments"], customer_id, confirmed)])


# --- one customer, in real time ---------------------------------------------------------------


async def refresh_customer(
    session: AsyncSession,
    *,
    customer_id: str,
    settings: SegmentsSettings,
    as_of: datetime | None = None,
    at: datetime | None = None,
    context: BatchContext | None = None,
) -> Changes:
    """Score one customer against the stored cut-points and models, and sync all their memberships."""
    return await refresh_customers(
        session, customer_ids=[customer_id], settings=settings, as_of=as_of, at=at, context=context
    )


async def refresh_customers(
    session: AsyncSession,
    *,
    customer_ids: Sequence[str],
    settings: SegmentsSettings,
    as_of: datetime | None = None,
    at: datetime | None = None,
    context: BatchContext | None = None,
) -> Changes:
    """Score some customers against the stored cut-points and models, and sync all their memberships.

    A handful of statements whatever the number of customers (after the lock: the facts with the
    context's versions; RFM, predictions and the attributes rules read; the membership diff), each
    for all of them at once, straight on the asyncpg connection. `context` shares the lock,
    segments and models among the customers of one batch of events.
    """
    if not customer_ids:
        return Changes()
    ids = sorted(set(customer_ids))  # one lock order for every writer
    as_of = as_of or datetime.now(UTC)
    at = at or datetime.now(UTC)
    context = context or BatchContext()
    conn = await context.connection(session)
    if not context.locked:
        await pg.execute(conn, _LOCK_AND_PLAN, {"base_lock": BASE_LOCK, "plan_cache_mode": _plan_cache_mode(len(ids))})
        context.locked = True
    facts = await _facts_and_versions(conn, customer_ids=ids, as_of=as_of, context=context)
    cuts = await _cut_points(session, facts=facts, as_of=as_of, context=context)
    model = await context.clv_model(session)
    attributes = await _score_and_read(
        conn, customer_ids=ids, facts=facts, cuts=cuts, model=model, settings=settings, as_of=as_of, at=at
    )
    active = await context.active_segments(session)
    cluster_of = _clusters_of(await context.cluster_model(session), list(facts.values()))
    wanted: dict[str, dict[str, str]] = {}
    for customer_id in ids:
        own = dict([cluster_of[customer_id]] if customer_id in cluster_of else [])
        for segment in active:
            reason = _match(segment, attributes.get(customer_id, {}), model, settings, as_of, context)
            if reason is not None:
                own[segment.id] = reason
        wanted[customer_id] = own
    live = {s.id for s in active}
    wanted = {c: {sid: why for sid, why in own.items() if sid in live} for c, own in wanted.items()}
    return await apply_customers_memberships(
        session, wanted=wanted, segment_ids=[s.id for s in active], at=at, segments=active, conn=conn
    )


async def _facts_and_versions(
    conn: asyncpg.Connection, *, customer_ids: Sequence[str], as_of: datetime, context: BatchContext
) -> dict[str, CustomerFacts]:
    """The customers' facts (those with orders); in the same statement, once per context, the versions
    of what it caches (read under the lock, as the facts are)."""
    params = {"as_of": as_of, "customer_ids": list(customer_ids)}
    if context.has_versions:
        rows = await pg.fetch(conn, facts_sql(customer_filter=True), params)
    else:
        rows = await pg.fetch(conn, _FACTS_AND_VERSIONS, params)
        context.set_versions(rows[0])
    return {
        row["customer_id"]: CustomerFacts(*(row[name] for name in _FACT_FIELDS))
        for row in rows
        if row["customer_id"] is not None
    }


_FACT_FIELDS = tuple(CustomerFacts.__dataclass_fields__)
_FACTS_AND_VERSIONS = f"""
    SELECT v.*, f.* FROM ({_CONTEXT_VERSIONS}) v LEFT JOIN ({facts_sql(customer_filter=True)}) f ON true
"""


async def _cut_points(
    session: AsyncSession, *, facts: Mapping[str, CustomerFacts], as_of: datetime, context: BatchContext
) -> RfmCutPoints | None:
    cuts = await context.cut_points(session)
    if cuts is None and facts:
        # Before the first full recompute (a new system) the base is small: take its cut-points now.
        everyone = f"({facts_sql(customer_filter=False)}) AS base"
        cuts = await store_cut_points(session, as_of=as_of, facts=everyone)
        context.stored_cut_points(cuts)
    return cuts


# RFM and predictions of a few customers, then what rules read of them: customer_attributes as it
# is once both writes are done (one statement; the view is defined in migration 0002). Customers
# without orders (or without cut-points) lose their scores, those without orders their predictions;
# with orders but no model their stored predictions stay. The written rows come from RETURNING: the
# statement's own snapshot does not see them.
_SCORE_AND_READ = f"""
    WITH rfm_gone AS (
        DELETE FROM rfm_scores WHERE customer_id = ANY(CAST(:unscored AS text[])) RETURNING customer_id
    ),
    rfm AS (
        {_UPSERT_RFM}
        RETURNING customer_id, recency_days, frequency, monetary, r_score, f_score, m_score, rfm_segment
    ),
    predictions_gone AS (
        DELETE FROM predictions WHERE customer_id = ANY(CAST(:without_orders AS text[])) RETURNING customer_id
    ),
    predicted AS (
        {UPSERT_PREDICTIONS}
        RETURNING customer_id, p_alive, expected_purchases_90d, clv_365d
    )
    SELECT c.customer_id, p.profile::text AS profile, r.recency_days, r.frequency, r.monetary, r.r_score,
           r.f_score, r.m_score, r.rfm_segment,
           CASE WHEN n.customer_id IS NULL THEN s.p_alive ELSE n.p_alive END AS p_alive,
           CASE WHEN n.customer_id IS NULL THEN s.expected_purchases_90d ELSE n.expected_purchases_90d END
               AS expected_purchases_90d,
           CASE WHEN n.customer_id IS NULL THEN s.clv_365d ELSE n.clv_365d END AS clv_365d
    FROM customers c
    LEFT JOIN customer_profiles p ON p.customer_id = c.customer_id
    LEFT JOIN rfm r ON r.customer_id = c.customer_id
    LEFT JOIN predicted n ON n.customer_id = c.customer_id
    LEFT JOIN predictions s
        ON s.customer_id = c.customer_id AND NOT s.customer_id = ANY(CAST(:without_orders AS text[]))
    WHERE c.customer_id = ANY(CAST(:customer_ids AS text[]))
"""


async def _score_and_read(
    conn: asyncpg.Connection,
    *,
    customer_ids: Sequence[str],
    facts: Mapping[str, CustomerFacts],
    cuts: RfmCutPoints | None,
    model: ClvModel | None,
    settings: SegmentsSettings,
    as_of: datetime,
    at: datetime,
) -> dict[str, dict[str, Any]]:
    """Store the customers' RFM and predictions; their customer_attributes rows after that."""
    scored = [c for c in customer_ids if cuts is not None and c in facts]
    rows = [rfm_values(facts[c], cuts, as_of) for c in scored] if cuts is not None else []
    params: dict[str, Any] = {
        "customer_ids": list(customer_ids),
        "unscored": [c for c in customer_ids if cuts is None or c not in facts],
        "without_orders": [c for c in customer_ids if c not in facts],
        "as_of": as_of,
        "customers": scored,
        "recency": [r["recency_days"] for r in rows],
        "frequency": [r["frequency"] for r in rows],
        "monetary": [r["monetary"] for r in rows],
        "r": [r["r_score"] for r in rows],
        "f": [r["f_score"] for r in rows],
        "m": [r["m_score"] for r in rows],
        "segments": [r["rfm_segment"] for r in rows],
        **_prediction_values(customer_ids, facts=facts, model=model, settings=settings, at=at),
    }
    found = await pg.fetch(conn, _SCORE_AND_READ, params)
    attributes: dict[str, dict[str, Any]] = {}
    for row in found:
        values = dict(row.items())
        values["profile"] = orjson.loads(values["profile"]) if values["profile"] is not None else None
        attributes[row["customer_id"]] = values
    return attributes


def _prediction_values(
    customer_ids: Sequence[str],
    *,
    facts: Mapping[str, CustomerFacts],
    model: ClvModel | None,
    settings: SegmentsSettings,
    at: datetime,
) -> dict[str, Any]:
    """The parameters of UPSERT_PREDICTIONS for the customers with orders (none without a model)."""
    ids = [c for c in customer_ids if c in facts] if model is not None else []
    if model is None or not ids:
        return {"ids": [], "p": [], "e": [], "v": [], "model_id": None, "at": at}
    rows = [facts[c] for c in ids]
    x = np.array([f.repeat_days for f in rows], dtype=np.float64)
    m_x = np.array([float(f.repeat_spend) / f.repeat_days if f.repeat_days else 0.0 for f in rows])
    predicted = clv.predict(
        clv.BgNbd(model.r, model.alpha_days, model.a, model.b),
        clv.GammaGamma(model.p, model.q, model.gamma) if model.p and model.q and model.gamma else None,
        x=x,
        t_x=np.array([f.tenure_days - f.recency_days for f in rows], dtype=np.float64),
        T=np.array([f.tenure_days for f in rows], dtype=np.float64),
        m_x=m_x,
        purchases_days=settings.expected_purchases_days,
        horizon_days=settings.clv_horizon_days,
        annual_discount_rate=settings.annual_discount_rate,
    )
    return prediction_params(ids, predicted, model.id, at)


def _match(
    segment: ActiveSegment,
    attributes: dict[str, Any],
    model: ClvModel | None,
    settings: SegmentsSettings,
    as_of: datetime,
    context: BatchContext,
) -> str | None:
    """The reason the customer belongs to `segment` now, or None; mirrors the SQL of recompute.py."""
    if segment.kind == "rfm":
        if attributes.get("rfm_segment") != segment.name:
            return None
        a = attributes
        return f"R{a['r_score']} F{a['f_score']} M{a['m_score']}: {a['rfm_segment']}"
    if segment.kind == "rule":
        parsed, described = context.rule_of(segment, settings.max_rule_nodes)
        return "matches " + described if rules.evaluate(parsed, attributes, as_of=as_of) else None
    if segment.kind == "predictive":
        return _predictive_reason(segment.id, attributes, model, settings)
    return None  # clusters: see _cluster_of


def _predictive_reason(
    segment_id: str, attributes: dict[str, Any], model: ClvModel | None, settings: SegmentsSettings
) -> str | None:
    p_alive, value = attributes.get("p_alive"), attributes.get("clv_365d")
    churn_below = Decimal(str(settings.churn_risk_p_alive_below))
    if segment_id == "churn-risk" and p_alive is not None and p_alive < churn_below:
        return f"p_alive {p_alive} below {churn_below}"
    cut = model.top_value_cut if model is not None else None
    if segment_id == "top-predicted-value" and value is not None and cut is not None and value >= cut and value > 0:
        return f"clv_365d {value} at or above {cut}"
    return None


def _clusters_of(model: ClusterModel | None, facts: Sequence[CustomerFacts]) -> dict[str, tuple[str, str]]:
    """Per customer, the cluster segment whose centre is nearest (the last fit's scaler and centres) and why."""
    if model is None or not facts:
        return {}
    raw = clusters.feature_matrix(
        np.array([f.recency_days for f in facts], dtype=np.float64),
        np.array([f.frequency for f in facts], dtype=np.float64),
        np.array([float(f.monetary) for f in facts]),
        np.array([f.tenure_days for f in facts], dtype=np.float64),
    )
    clustering = clustering_of(model)
    labels = clustering.assign(raw)
    why = [f"closest to the centre of: {clusters.describe(centre)}" for centre in clustering.centres]
    return {
        f.customer_id: (model.segment_ids[int(label)], why[int(label)]) for f, label in zip(facts, labels, strict=True)
    }


def rfm_values(facts: CustomerFacts, cuts: RfmCutPoints, as_of: datetime) -> dict[str, Any]:
    """One customer's RFM row, scored against stored cut-points."""
    r = rfm.score_lower_better(facts.recency_days, cuts.recency)
    f = rfm.score_higher_better(facts.frequency, cuts.frequency)
    m = rfm.score_higher_better(facts.monetary, cuts.monetary)
    return {
        "as_of": as_of,
        "recency_days": facts.recency_days,
        "frequency": facts.frequency,
        "monetary": facts.monetary,
        "r_score": r,
        "f_score": f,
        "m_score": m,
        "rfm_segment": rfm.rfm_segment(r, f, m).name,
    }


async def rfm_as_of(session: AsyncSession, *, customer_id: str, as_of: datetime) -> dict[str, Any] | None:
    """RFM of one customer at another moment, against the current cut-points; nothing is stored."""
    facts = await load_customer_facts(session, customer_id=customer_id, as_of=as_of)
    cuts = (await session.execute(select(RfmCutPoints).order_by(RfmCutPoints.id.desc()).limit(1))).scalar_one_or_none()
    if facts is None or cuts is None:
        return None
    return {"customer_id": customer_id, **rfm_values(facts, cuts, as_of)}


async def active_clv_model(session: AsyncSession) -> ClvModel | None:
    return (
        await session.execute(select(ClvModel).where(ClvModel.active).order_by(ClvModel.id.desc()).limit(1))
    ).scalar_one_or_none()


async def customer_attributes(session: AsyncSession, *, customer_id: str) -> dict[str, Any]:
    """The customer_attributes row rules read (empty if segments never heard of the customer)."""
    return (await customers_attributes(session, customer_ids=[customer_id])).get(customer_id, {})


async def customers_attributes(session: AsyncSession, *, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = await session.execute(
        text("SELECT * FROM customer_attributes WHERE customer_id = ANY(CAST(:ids AS text[]))").columns(profile=JSONB),
        {"ids": list(customer_ids)},
    )
    return {row["customer_id"]: dict(row) for row in rows.mappings()}


# --- reads ------------------------------------------------------------------------------------


async def get_rfm(session: AsyncSession, *, customer_id: str) -> RfmScore | None:
    return await session.get(RfmScore, customer_id)


async def get_predictions(session: AsyncSession, *, customer_id: str) -> Prediction | None:
    return await session.get(Prediction, customer_id)


async def get_segment(session: AsyncSession, *, segment_id: str) -> Segment | None:
    segment = await session.get(Segment, segment_id)
    return segment if segment is not None and segment.status != "deleted" else None


async def segment_size(session: AsyncSession, *, segment_id: str) -> int:
    statement = text("SELECT count(*) FROM segment_members WHERE segment_id = :id")
    return int((await session.execute(statement, {"id": segment_id})).scalar_one())


async def list_segments(session: AsyncSession, *, kind: str | None = None) -> list[tuple[Segment, int]]:
    query = select(Segment).where(Segment.status == "active").order_by(Segment.kind, Segment.key)
    if kind:
        query = query.where(Segment.kind == kind)
    segments = (await session.execute(query)).scalars().all()
    counted = await session.execute(
        text(
            "SELECT segment_id, count(*) AS size FROM segment_members"
            " WHERE segment_id = ANY(CAST(:ids AS text[])) GROUP BY segment_id"
        ),
        {"ids": [s.id for s in segments]},
    )
    sizes: dict[str, int] = {row.segment_id: int(row.size) for row in counted}
    return [(segment, int(sizes.get(segment.id, 0))) for segment in segments]


async def segment_members(
    session: AsyncSession, *, segment_id: str, limit: int, after: str | None
) -> Sequence[SegmentMember]:
    query = select(SegmentMember).where(SegmentMember.segment_id == segment_id)
    if after:
        query = query.where(SegmentMember.customer_id > after)
    return (await session.execute(query.order_by(SegmentMember.customer_id).limit(limit))).scalars().all()


async def customer_segments(session: AsyncSession, *, customer_id: str) -> Sequence[Row[SegmentMember, Segment]]:
    return (
        await session.execute(
            select(SegmentMember, Segment)
            .join(Segment, Segment.id == SegmentMember.segment_id)
            .where(SegmentMember.customer_id == customer_id)
            .order_by(Segment.kind, Segment.key)
        )
    ).all()


async def membership_history(
    session: AsyncSession,
    *,
    segment_id: str | None = None,
    customer_id: str | None = None,
    limit: int,
    before: int | None = None,
) -> Sequence[Row[MembershipChange, Segment]]:
    """Changes newest first; `before` is the id of the last change of the previous page.

    Ended stays and exits are rows of membership_changes; the entry of a stay still going on is the
    member row (its `change_id`, reason and `entered_at`), shown as the same change it was.
    """
    ended = select(
        MembershipChange.id,
        MembershipChange.segment_id,
        MembershipChange.customer_id,
        MembershipChange.change,
        MembershipChange.reason,
        MembershipChange.occurred_at,
    )
    going_on = select(
        SegmentMember.change_id.label("id"),
        SegmentMember.segment_id,
        SegmentMember.customer_id,
        literal("entered", String).label("change"),
        SegmentMember.reason,
        SegmentMember.entered_at.label("occurred_at"),
    )
    branches = []
    for query, table in ((ended, MembershipChange), (going_on, SegmentMember)):
        key = table.id if table is MembershipChange else SegmentMember.change_id
        if segment_id:
            query = query.where(table.segment_id == segment_id)
        if customer_id:
            query = query.where(table.customer_id == customer_id)
        if before:
            query = query.where(key < before)
        branches.append(query.order_by(key.desc()).limit(limit).subquery())
    both = union_all(*(select(branch) for branch in branches)).subquery()
    change = aliased(MembershipChange, both)
    newest = select(change, Segment).join(Segment, Segment.id == change.segment_id)
    return (await session.execute(newest.order_by(change.id.desc()).limit(limit))).all()


async def segment_sizes(session: AsyncSession, *, segment_id: str, limit: int) -> Sequence[SegmentSize]:
    query = select(SegmentSize).where(SegmentSize.segment_id == segment_id)
    rows = (await session.execute(query.order_by(SegmentSize.measured_at.desc()).limit(limit))).scalars().all()
    return list(reversed(rows))


# --- rule segments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    count: int
    sample: list[str]
    description: str


async def preview_rule(
    session: AsyncSession, *, rule: dict[str, Any], settings: SegmentsSettings, sample_size: int
) -> Preview:
    """How many customers a rule matches now, and a few of them, without saving anything."""
    parsed = rules.parse_rule(rule, max_nodes=settings.max_rule_nodes)
    compiled = rules.to_sql(parsed)
    params = {**compiled.params, "as_of": datetime.now(UTC)}
    where = f"FROM customer_attributes a WHERE {compiled.sql}"
    count = (await session.execute(text(f"SELECT count(*) {where}"), params)).scalar_one()
    sample = (
        await session.execute(
            text(f"SELECT a.customer_id {where} ORDER BY a.customer_id LIMIT :limit"), {**params, "limit": sample_size}
        )
    ).scalars()
    return Preview(int(count), list(sample), rules.describe(parsed))


async def _sync_rule_segment(session: AsyncSession, segment: Segment, settings: SegmentsSettings) -> Changes:
    sql, params = rule_targets(segment, max_nodes=settings.max_rule_nodes, source="customer_attributes")
    return await apply_memberships(
        session,
        segment_ids=[segment.id],
        targets_sql=sql,
        params={**params, "as_of": datetime.now(UTC)},
        at=datetime.now(UTC),
    )


async def create_rule_segment(
    session: AsyncSession,
    *,
    key: str,
    name: str,
    description: str,
    rule: dict[str, Any],
    settings: SegmentsSettings,
) -> Segment:
    """Save a rule segment and compute its members at once (entered events for each)."""
    rules.parse_rule(rule, max_nodes=settings.max_rule_nodes)
    taken = (await session.execute(select(Segment.id).where(Segment.key == key))).scalar()
    if taken is not None:
        raise SegmentConflict(f"segment key '{key}' is already used")
    segment = Segment(
        id=f"seg_{uuid.uuid4().hex[:20]}", key=key, name=name, kind="rule", description=description, rule=rule
    )
    session.add(segment)
    await session.flush()
    await _sync_rule_segment(session, segment, settings)
    return segment


async def update_rule_segment(
    session: AsyncSession,
    *,
    segment: Segment,
    name: str | None,
    description: str | None,
    rule: dict[str, Any] | None,
    settings: SegmentsSettings,
) -> Segment:
    if segment.kind != "rule":
        raise SegmentConflict(f"{segment.kind} segments are maintained by segments itself and cannot be edited")
    if rule is not None:
        rules.parse_rule(rule, max_nodes=settings.max_rule_nodes)
        segment.rule = rule
    segment.name = name if name is not None else segment.name
    segment.description = description if description is not None else segment.description
    segment.updated_at = datetime.now(UTC)
    await session.flush()
    if rule is not None:
        await _sync_rule_segment(session, segment, settings)
    return segment


async def delete_rule_segment(session: AsyncSession, *, segment: Segment) -> Changes:
    """Every member exits (events published), then the segment is kept as deleted for its history."""
    if segment.kind != "rule":
        raise SegmentConflict(f"{segment.kind} segments are maintained by segments itself and cannot be deleted")
    changes = await apply_memberships(
        session, segment_ids=[segment.id], targets_sql=NO_TARGETS, params={}, at=datetime.now(UTC)
    )
    segment.status = "deleted"
    segment.updated_at = datetime.now(UTC)
    await session.flush()
    return changes


# --- CLV fit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClvFit:
    bgnbd: clv.BgNbd
    gamma_gamma: clv.GammaGamma | None
    customers: int
    time_unit: str
    calibration_end: date
    holdout_days: int
    predicted_repeat_purchases: float
    actual_repeat_purchases: int
    model_id: int


def _end_of_day(day: date) -> datetime:
    return datetime.combine(day, time.max, tzinfo=UTC)


async def fit_clv(
    session: AsyncSession, *, calibration_end: date | None, time_unit: str, settings: SegmentsSettings
) -> ClvFit | None:
    """Fit BG/NBD and Gamma-Gamma on purchases up to calibration_end; compare with the holdout after it.

    None when there are too few repeat customers to fit. Without calibration_end all data is used,
    the fit becomes the active model for predictions and the holdout is empty.
    """
    last_order = (await session.execute(text("SELECT max(occurred_at) FROM orders"))).scalar()
    end = calibration_end or datetime.now(UTC).date()
    customers = await build_facts_table(session, as_of=_end_of_day(end))
    facts = await fact_arrays(session)
    if not facts or (facts["x"] > 0).sum() < 10:
        return None
    scale = 7.0 if time_unit == "week" else 1.0
    x, m_x, T_days, t_x_days = facts["x"], facts["m_x"], facts["t"], facts["t_x"]
    bgnbd = clv.fit_bgnbd(x, t_x_days / scale, T_days / scale)
    gamma_gamma = clv.fit_gamma_gamma(x, m_x)
    holdout_end = last_order.astimezone(UTC).date() if last_order and calibration_end else end
    holdout_days = max((holdout_end - end).days, 0)
    predicted = float(clv.expected_purchases(bgnbd, holdout_days / scale, x, t_x_days / scale, T_days / scale).sum())
    actual = 0
    if holdout_days:
        actual = int(
            (
                await session.execute(
                    text(
                        "SELECT count(DISTINCT (o.customer_id, (o.occurred_at AT TIME ZONE 'UTC')::date)) FROM orders o"
                        " WHERE o.occurred_at > :start AND o.occurred_at <= :end AND o.customer_id IN"
                        " (SELECT customer_id FROM orders WHERE occurred_at <= :start)"
                    ),
                    {"start": _end_of_day(end), "end": _end_of_day(holdout_end)},
                )
            ).scalar_one()
        )
    model = clv_model_row(bgnbd, gamma_gamma, days_per_unit=scale, customers=customers, calibration_end=calibration_end)
    if calibration_end is None:
        previous = await active_clv_model(session)
        model.top_value_cut = previous.top_value_cut if previous else None
        await session.execute(text("UPDATE clv_models SET active = false WHERE active"))
    session.add(model)
    await session.flush()
    return ClvFit(bgnbd, gamma_gamma, customers, time_unit, end, holdout_days, predicted, actual, model.id)
