"""The full recompute: RFM, predictions, clusters and every segment's membership, set-based.

Heavy work stays in SQL (aggregation, quintiles, scoring, membership diffs) or vectorised numpy
(model fits and predictions); Python never loops over customers with queries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from segments import clusters, clv, rfm, rules
from segments.config import SegmentsSettings
from segments.facts import build_facts_table
from segments.membership import Changes, apply_memberships, lock_whole_base
from segments.models import ClusterModel, ClvModel, RecomputeRun, RfmCutPoints, Segment

CHURN_RISK = "churn-risk"
TOP_VALUE = "top-predicted-value"


@dataclass
class RecomputeSummary:
    as_of: datetime
    customers: int
    entered: int = 0
    exited: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


async def recompute_all(
    session: AsyncSession, *, settings: SegmentsSettings, as_of: datetime | None = None, at: datetime | None = None
) -> RecomputeSummary:
    as_of = as_of or datetime.now(UTC)
    at = at or datetime.now(UTC)
    watch = _Stopwatch()
    await lock_whole_base(session)
    # Whole-base joins must hash: a nested loop re-scanning a table being filled is quadratic.
    await session.execute(text("SET LOCAL enable_nestloop = off"))
    # Hash joins and sorts over a million customers stay in memory instead of spilling in batches.
    await session.execute(text(f"SET LOCAL work_mem = '{settings.recompute_work_mem}'"))
    customers = await build_facts_table(session, as_of=as_of)
    watch.lap("facts")
    facts = await fact_arrays(session)
    watch.lap("fetch_facts")
    # The model fits are numpy / SciPy / scikit-learn work in this process while RFM is PostgreSQL's
    # work in its backend: run both at once (two cores), the fits in a thread. Both only read.
    fitting = asyncio.ensure_future(asyncio.to_thread(fit_models, facts, settings))
    try:
        await compute_rfm(session, as_of=as_of)
        await session.execute(text("ANALYZE rfm_scores"))
    finally:
        fits = await fitting
    watch.lap("rfm_and_fits")
    await compute_predictions(session, facts=facts, settings=settings, at=at, fit=fits.clv)
    await session.execute(text("ANALYZE predictions"))
    watch.lap("predictions")
    await compute_clusters(session, facts=facts, settings=settings, fit=fits.clusters)
    watch.lap("clusters")
    changes = await sync_all_memberships(session, settings=settings, as_of=as_of, at=at, watch=watch)
    await record_sizes(session, at=at)
    watch.lap("sizes")
    session.add(
        RecomputeRun(
            as_of=as_of,
            started_at=at,
            finished_at=datetime.now(UTC),
            customers=customers,
            entered=changes.entered,
            exited=changes.exited,
            seconds=watch.seconds,
        )
    )
    await session.flush()
    return RecomputeSummary(as_of, customers, changes.entered, changes.exited, watch.seconds)


# --- RFM --------------------------------------------------------------------------------------


async def store_cut_points(session: AsyncSession, *, as_of: datetime, facts: str) -> RfmCutPoints | None:
    """Quintile cut-points of recency, frequency and monetary over `facts` (a table or subquery)."""
    quantiles = "ARRAY[" + ", ".join(str(q) for q in rfm.QUANTILES) + "]"
    cuts = (
        await session.execute(
            text(
                f"SELECT count(*) AS customers,"
                f" percentile_disc({quantiles}) WITHIN GROUP (ORDER BY recency_days)::numeric[] AS recency,"
                f" percentile_disc({quantiles}) WITHIN GROUP (ORDER BY frequency)::numeric[] AS frequency,"
                f" percentile_disc({quantiles}) WITHIN GROUP (ORDER BY monetary)::numeric[] AS monetary"
                f" FROM {facts}"
            ),
            {"as_of": as_of},
        )
    ).one()
    if not cuts.customers:
        return None
    cut_points = RfmCutPoints(
        as_of=as_of,
        customers=cuts.customers,
        recency=list(cuts.recency),
        frequency=list(cuts.frequency),
        monetary=list(cuts.monetary),
    )
    session.add(cut_points)
    await session.flush()
    return cut_points


async def sync_from_staging(
    session: AsyncSession, *, table: str, staging: str, compared: Sequence[str], also: Sequence[str]
) -> None:
    """Make `table` hold exactly the rows of `staging` (keyed by customer_id), writing only real changes.

    Hash joins instead of an upsert per row: a recompute that changes little writes little. Runs
    under the exclusive base lock (no other writer of the table meanwhile).
    """
    columns = [*compared, *also]
    assignments = ", ".join(f"{c} = s.{c}" for c in columns)
    old = ", ".join(f"t.{c}" for c in compared)
    new = ", ".join(f"s.{c}" for c in compared)
    await session.execute(
        text(
            f"UPDATE {table} t SET {assignments} FROM {staging} s"
            f" WHERE t.customer_id = s.customer_id AND ({old}) IS DISTINCT FROM ({new})"
        )
    )
    listed = ", ".join(columns)
    await session.execute(
        text(
            f"INSERT INTO {table} (customer_id, {listed}) SELECT s.customer_id, {', '.join('s.' + c for c in columns)}"
            f" FROM {staging} s WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.customer_id = s.customer_id)"
        )
    )
    # Every staged key is in the table now; as both are keyed by customer, equal counts mean nothing
    # is left to delete, which spares the usual case a second anti-join over the whole base.
    staged = (await session.execute(text(f"SELECT count(*) FROM {staging}"))).scalar_one()
    held = (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
    if held != staged:
        await session.execute(
            text(
                f"DELETE FROM {table} t"
                f" WHERE NOT EXISTS (SELECT 1 FROM {staging} s WHERE s.customer_id = t.customer_id)"
            )
        )


async def _staging_table(session: AsyncSession, name: str, select_sql: str, params: dict[str, Any]) -> None:
    await session.execute(text(f"DROP TABLE IF EXISTS {name}"))
    await session.execute(text(f"CREATE TEMPORARY TABLE {name} ON COMMIT DROP AS {select_sql}"), params)
    await session.execute(text(f"ANALYZE {name}"))


async def replace_rows(
    session: AsyncSession,
    *,
    table: str,
    staging: str,
    select_sql: str,
    params: dict[str, Any],
    columns: Sequence[str],
    compared: Sequence[str],
    also: Sequence[str],
) -> None:
    """Make `table` hold exactly the rows of `select_sql` (keyed by customer_id, in `columns` order).

    An empty table (the first recompute of a base) takes them with one insert; otherwise they are
    staged and synced, writing only real changes (`sync_from_staging`). Under the exclusive base
    lock, so the table cannot fill meanwhile. Staging a million rows first cost the first run
    about a second per table.
    """
    empty = (await session.execute(text(f"SELECT NOT EXISTS (SELECT 1 FROM {table})"))).scalar_one()
    if empty:
        await session.execute(text(f"INSERT INTO {table} ({', '.join(columns)}) {select_sql}"), params)
        return
    await _staging_table(session, staging, select_sql, params)
    await sync_from_staging(session, table=table, staging=staging, compared=compared, also=also)


RFM_COLUMNS = ("recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "rfm_segment")


async def compute_rfm(session: AsyncSession, *, as_of: datetime) -> RfmCutPoints | None:
    """Quintile cut-points over the whole base, then every customer's scores, in the database."""
    cut_points = await store_cut_points(session, as_of=as_of, facts="customer_facts")
    r = rfm.sql_score_lower_better("recency_days", "CAST(:recency AS numeric[])")
    f = rfm.sql_score_higher_better("frequency", "CAST(:frequency AS numeric[])")
    m = rfm.sql_score_higher_better("monetary", "CAST(:monetary AS numeric[])")
    await replace_rows(
        session,
        table="rfm_scores",
        staging="rfm_staging",
        columns=("customer_id", "as_of", *RFM_COLUMNS),
        compared=RFM_COLUMNS,
        also=("as_of",),
        select_sql=f"""
        SELECT customer_id, CAST(:as_of AS timestamptz) AS as_of, recency_days, frequency, monetary,
               r AS r_score, f AS f_score, m AS m_score, {rfm.sql_segment_case("r", "f", "m")} AS rfm_segment
        FROM (SELECT customer_id, recency_days, frequency, monetary, {r} AS r, {f} AS f, {m} AS m
              FROM customer_facts) scored
        """,
        params={
            "as_of": as_of,
            "recency": cut_points.recency if cut_points else [],
            "frequency": cut_points.frequency if cut_points else [],
            "monetary": cut_points.monetary if cut_points else [],
        },
    )
    return cut_points


# --- predictions ------------------------------------------------------------------------------


async def fact_arrays(session: AsyncSession) -> dict[str, Any]:
    row = (
        await session.execute(
            text(
                "SELECT array_agg(customer_id) AS ids, array_agg(repeat_days::float8) AS x,"
                " array_agg((tenure_days - recency_days)::float8) AS t_x, array_agg(tenure_days::float8) AS t,"
                " array_agg(CASE WHEN repeat_days > 0 THEN (repeat_spend / repeat_days)::float8 ELSE 0 END) AS m_x,"
                " array_agg(recency_days::float8) AS recency, array_agg(frequency::float8) AS frequency,"
                " array_agg(monetary::float8) AS monetary FROM customer_facts"
            )
        )
    ).one()
    if row.ids is None:
        return {}
    arrays: dict[str, Any] = {
        name: np.asarray(value, dtype=np.float64) for name, value in row._asdict().items() if name != "ids"
    }
    arrays["ids"] = list(row.ids)
    return arrays


def clv_model_row(
    bgnbd: clv.BgNbd,
    gamma_gamma: clv.GammaGamma | None,
    *,
    days_per_unit: float,
    customers: int,
    calibration_end: date | None,
) -> ClvModel:
    """A fit as a row; it is the active model (used for predictions) when fitted on all data."""
    return ClvModel(
        calibration_end=calibration_end,
        r=bgnbd.r,
        alpha_days=bgnbd.alpha * days_per_unit,
        a=bgnbd.a,
        b=bgnbd.b,
        p=gamma_gamma.p if gamma_gamma else None,
        q=gamma_gamma.q if gamma_gamma else None,
        gamma=gamma_gamma.gamma if gamma_gamma else None,
        log_likelihood=bgnbd.log_likelihood,
        customers=customers,
        active=calibration_end is None,
    )


@dataclass(frozen=True)
class ClvFit:
    bgnbd: clv.BgNbd
    gamma_gamma: clv.GammaGamma | None
    customers: int  # fitted on
    predicted: clv.Predictions  # everyone in the facts, in their order


@dataclass(frozen=True)
class ClusterFit:
    fitted: clusters.Clustering
    labels: npt.NDArray[np.int64]  # everyone in the facts, in their order


@dataclass(frozen=True)
class ModelFits:
    clv: ClvFit | None
    clusters: ClusterFit | None


def fit_models(facts: dict[str, Any], settings: SegmentsSettings) -> ModelFits:
    """Both model fits and everyone's predictions and clusters: CPU work only, no database."""
    return ModelFits(fit_clv(facts, settings), fit_clusters(facts, settings))


def fit_clv(facts: dict[str, Any], settings: SegmentsSettings) -> ClvFit | None:
    """BG/NBD and Gamma-Gamma on a sample, everyone predicted; None with too few repeat customers."""
    if not facts or (facts["x"] > 0).sum() < 10:
        return None
    x, t_x, T, m_x = facts["x"], facts["t_x"], facts["t"], facts["m_x"]
    rng = np.random.default_rng(settings.cluster_seed)
    fit_rows = (
        rng.choice(len(x), settings.clv_fit_sample, replace=False) if len(x) > settings.clv_fit_sample else slice(None)
    )
    bgnbd = clv.fit_bgnbd(x[fit_rows], t_x[fit_rows], T[fit_rows])
    gamma_gamma = clv.fit_gamma_gamma(x[fit_rows], m_x[fit_rows])
    predicted = clv.predict(
        bgnbd,
        gamma_gamma,
        x=x,
        t_x=t_x,
        T=T,
        m_x=m_x,
        purchases_days=settings.expected_purchases_days,
        horizon_days=settings.clv_horizon_days,
        annual_discount_rate=settings.annual_discount_rate,
    )
    return ClvFit(bgnbd, gamma_gamma, len(x[fit_rows]), predicted)


async def compute_predictions(
    session: AsyncSession,
    *,
    facts: dict[str, Any],
    settings: SegmentsSettings,
    at: datetime,
    fit: ClvFit | Literal["now"] | None = "now",
) -> ClvModel | None:
    """Store the fit as the active model and everyone's predictions (`fit` done already, or "now")."""
    if isinstance(fit, str):
        fit = fit_clv(facts, settings)
    if fit is None:
        # Too few repeat customers to fit anything: keep earlier predictions of those still here.
        await session.execute(
            text(
                "DELETE FROM predictions p"
                " WHERE NOT EXISTS (SELECT 1 FROM customer_facts f WHERE f.customer_id = p.customer_id)"
            )
        )
        return None
    model = clv_model_row(fit.bgnbd, fit.gamma_gamma, days_per_unit=1.0, customers=fit.customers, calibration_end=None)
    await session.execute(text("UPDATE clv_models SET active = false WHERE active"))
    session.add(model)
    await session.flush()
    await replace_predictions(session, ids=facts["ids"], predicted=fit.predicted, model_id=model.id, at=at)
    cut = (
        await session.execute(
            text("SELECT percentile_disc(:q) WITHIN GROUP (ORDER BY clv_365d) FROM predictions"),
            {"q": 1.0 - settings.top_value_share},
        )
    ).scalar()
    model.top_value_cut = cut
    await session.flush()
    return model


PREDICTION_COLUMNS = ("customer_id", "p_alive", "expected_purchases_90d", "clv_365d", "model_id", "computed_at")
_PREDICTION_ROWS = """
    SELECT u.id AS customer_id, round(u.p::numeric, 6) AS p_alive, round(u.e::numeric, 6) AS expected_purchases_90d,
           round(u.v::numeric, 2) AS clv_365d, CAST(:model_id AS bigint) AS model_id,
           CAST(:at AS timestamptz) AS computed_at
    FROM unnest(CAST(:ids AS text[]), CAST(:p AS float8[]), CAST(:e AS float8[]), CAST(:v AS float8[]))
         AS u(id, p, e, v)
"""


def prediction_params(ids: Sequence[str], predicted: clv.Predictions, model_id: int, at: datetime) -> dict[str, Any]:
    return {
        "ids": list(ids),
        "p": np.clip(predicted.p_alive, 0.0, 1.0).tolist(),
        "e": np.minimum(predicted.expected_purchases, 1e7).tolist(),
        "v": np.clip(predicted.value, -1e14, 1e14).tolist(),
        "model_id": model_id,
        "at": at,
    }


# A few customers' rounded predictions (numeric, so SQL and Python rules compare the same).
UPSERT_PREDICTIONS = f"""
    INSERT INTO predictions AS p (customer_id, p_alive, expected_purchases_90d, clv_365d, model_id, computed_at)
    {_PREDICTION_ROWS}
    ON CONFLICT (customer_id) DO UPDATE SET
        p_alive = EXCLUDED.p_alive, expected_purchases_90d = EXCLUDED.expected_purchases_90d,
        clv_365d = EXCLUDED.clv_365d, model_id = EXCLUDED.model_id, computed_at = EXCLUDED.computed_at
"""


async def replace_predictions(
    session: AsyncSession, *, ids: Sequence[str], predicted: clv.Predictions, model_id: int, at: datetime
) -> None:
    """Everyone's predictions: stage them, then write only the ones that changed."""
    await replace_rows(
        session,
        table="predictions",
        staging="prediction_staging",
        select_sql=_PREDICTION_ROWS,
        params=prediction_params(ids, predicted, model_id, at),
        columns=PREDICTION_COLUMNS,
        compared=("p_alive", "expected_purchases_90d", "clv_365d"),
        also=("model_id", "computed_at"),
    )


# --- clusters ---------------------------------------------------------------------------------


async def latest_cluster_model(session: AsyncSession) -> ClusterModel | None:
    return (await session.execute(select(ClusterModel).order_by(ClusterModel.id.desc()).limit(1))).scalar_one_or_none()


def clustering_of(model: ClusterModel) -> clusters.Clustering:
    return clusters.Clustering(
        np.asarray(model.mean, dtype=np.float64),
        np.asarray(model.scale, dtype=np.float64),
        np.asarray(model.centres, dtype=np.float64),
        model.silhouette,
    )


def fit_clusters(facts: dict[str, Any], settings: SegmentsSettings) -> ClusterFit | None:
    """k-means on a sample and everyone's nearest centre; None with too few customers."""
    if not facts or len(facts["ids"]) < max(settings.cluster_k_min, 2) * 5:
        return None
    raw = clusters.feature_matrix(facts["recency"], facts["frequency"], facts["monetary"], facts["t"])
    fitted = clusters.fit(
        raw,
        k=settings.cluster_k,
        k_range=(settings.cluster_k_min, settings.cluster_k_max),
        fit_sample=settings.cluster_fit_sample,
        silhouette_sample=settings.cluster_silhouette_sample,
        seed=settings.cluster_seed,
        threads=settings.cluster_threads,
    )
    return ClusterFit(fitted, fitted.assign(raw))


async def compute_clusters(
    session: AsyncSession,
    *,
    facts: dict[str, Any],
    settings: SegmentsSettings,
    fit: ClusterFit | Literal["now"] | None = "now",
) -> ClusterModel | None:
    """Keep identities by matching centres to the previous fit, stage the assignments (`fit` done, or "now")."""
    await session.execute(text("DROP TABLE IF EXISTS cluster_targets"))
    await session.execute(
        text("CREATE TEMPORARY TABLE cluster_targets (segment_id text, customer_id text, reason text) ON COMMIT DROP")
    )
    if isinstance(fit, str):
        fit = fit_clusters(facts, settings)
    if fit is None:
        return None
    fitted = fit.fitted
    previous = await latest_cluster_model(session)
    old_raw = None
    if previous is not None:
        old = clustering_of(previous)
        old_raw = old.centres * old.scale + old.mean
    matches = clusters.match_identities(old_raw, fitted)
    segment_ids = await _cluster_segments(session, previous, matches, fitted)
    model = ClusterModel(
        k=len(fitted.centres),
        features=list(clusters.FEATURES),
        mean=fitted.mean.tolist(),
        scale=fitted.scale.tolist(),
        centres=fitted.centres.tolist(),
        segment_ids=segment_ids,
        silhouette=fitted.silhouette,
    )
    session.add(model)
    await session.flush()
    labels = fit.labels
    descriptions = [clusters.describe(centre) for centre in fitted.centres]
    await session.execute(
        text(
            "INSERT INTO cluster_targets SELECT s.segment_id, u.id, s.reason"
            " FROM unnest(CAST(:ids AS text[]), CAST(:labels AS int[])) AS u(id, label)"
            " JOIN unnest(CAST(:segment_ids AS text[]), CAST(:reasons AS text[])) WITH ORDINALITY"
            "   AS s(segment_id, reason, n) ON s.n = u.label + 1"
        ),
        {
            "ids": facts["ids"],
            "labels": labels.tolist(),
            "segment_ids": segment_ids,
            "reasons": [f"closest to the centre of: {d}" for d in descriptions],
        },
    )
    await session.execute(text("ANALYZE cluster_targets"))
    return model


async def _cluster_segments(
    session: AsyncSession, previous: ClusterModel | None, matches: list[int | None], fitted: clusters.Clustering
) -> list[str]:
    """A segment per new cluster: the predecessor's where matched, else a new one; the rest retire."""
    existing = (await session.execute(select(Segment).where(Segment.kind == "cluster"))).scalars().all()
    by_id = {segment.id: segment for segment in existing}
    next_number = 1 + max((int(s.id.removeprefix("cluster-")) for s in existing), default=0)
    now = datetime.now(UTC)
    ids: list[str] = []
    for match, centre in zip(matches, fitted.centres, strict=True):
        if previous is not None and match is not None:
            segment_id = previous.segment_ids[match]
        else:
            segment_id = f"cluster-{next_number}"
            next_number += 1
        words = clusters.describe(centre)
        number = segment_id.removeprefix("cluster-")
        segment = by_id.get(segment_id)
        if segment is None:
            segment = Segment(id=segment_id, key=segment_id, kind="cluster", name="", description="")
            session.add(segment)
        segment.name = f"Cluster {number}: {words}"
        segment.description = f"k-means cluster of customers who are {words}"
        segment.status = "active"
        segment.updated_at = now
        ids.append(segment_id)
    for segment in existing:
        if segment.id not in ids and segment.status == "active":
            segment.status = "retired"
            segment.updated_at = now
    await session.flush()
    return ids


# --- memberships ------------------------------------------------------------------------------


async def segments_of_kind(session: AsyncSession, kind: str, statuses: Sequence[str] = ("active",)) -> list[Segment]:
    return list(
        (await session.execute(select(Segment).where(Segment.kind == kind, Segment.status.in_(statuses))))
        .scalars()
        .all()
    )


RFM_TARGETS = """
    SELECT s.id AS segment_id, r.customer_id,
           'R' || r.r_score || ' F' || r.f_score || ' M' || r.m_score || ': ' || r.rfm_segment AS reason
    FROM rfm_scores r JOIN segments s ON s.kind = 'rfm' AND s.status = 'active' AND s.name = r.rfm_segment
"""
PREDICTIVE_TARGETS = """
    SELECT 'churn-risk' AS segment_id, p.customer_id,
           'p_alive ' || p.p_alive || ' below ' || CAST(:churn_below AS numeric) AS reason
    FROM predictions p WHERE p.p_alive < CAST(:churn_below AS numeric)
    UNION ALL
    SELECT 'top-predicted-value', p.customer_id, 'clv_365d ' || p.clv_365d || ' at or above ' || m.top_value_cut
    FROM predictions p JOIN clv_models m ON m.active
    WHERE p.clv_365d >= m.top_value_cut AND p.clv_365d > 0
"""


def rule_targets(segment: Segment, *, max_nodes: int, source: str = "attributes") -> tuple[str, dict[str, Any]]:
    parsed = rules.parse_rule(segment.rule, max_nodes=max_nodes)
    compiled = rules.to_sql(parsed, alias="a", prefix="rule_")
    sql = (
        "SELECT CAST(:rule_segment AS text) AS segment_id, a.customer_id, CAST(:rule_reason AS text) AS reason"
        f" FROM {source} a WHERE {compiled.sql}"
    )
    return sql, {**compiled.params, "rule_segment": segment.id, "rule_reason": "matches " + rules.describe(parsed)}


async def sync_all_memberships(
    session: AsyncSession, *, settings: SegmentsSettings, as_of: datetime, at: datetime, watch: _Stopwatch
) -> Changes:
    """Everyone's wanted memberships of every kind into one staging table, then one diff writes the changes.

    One pass over segment_members and one insert each into members, history and outbox, instead of
    one per segment kind and rule: statement overhead and table scans stop growing with the number
    of segments. The memberships and their events commit in the recompute's one transaction.
    """
    await session.execute(text("DROP TABLE IF EXISTS wanted_members"))
    await session.execute(
        text("CREATE TEMPORARY TABLE wanted_members (segment_id text, customer_id text, reason text) ON COMMIT DROP")
    )
    segment_ids = [s.id for s in await segments_of_kind(session, "rfm")]
    await session.execute(text(f"INSERT INTO wanted_members {RFM_TARGETS}"))
    predictive_ids = [s.id for s in await segments_of_kind(session, "predictive")]
    if predictive_ids:
        await session.execute(
            text(
                "INSERT INTO wanted_members SELECT * FROM"
                f" ({PREDICTIVE_TARGETS}) p WHERE p.segment_id = ANY(CAST(:predictive_ids AS text[]))"
            ),
            {"churn_below": Decimal(str(settings.churn_risk_p_alive_below)), "predictive_ids": predictive_ids},
        )
    segment_ids += predictive_ids
    segment_ids += [s.id for s in await segments_of_kind(session, "cluster", ("active", "retired"))]
    await session.execute(text("INSERT INTO wanted_members SELECT * FROM cluster_targets"))
    rule_segments = await segments_of_kind(session, "rule")
    if rule_segments:
        # Rules read one materialised copy of the attributes instead of re-joining four tables per rule.
        await session.execute(text("DROP TABLE IF EXISTS attributes"))
        await session.execute(
            text("CREATE TEMPORARY TABLE attributes ON COMMIT DROP AS SELECT * FROM customer_attributes")
        )
        await session.execute(text("ANALYZE attributes"))
    for segment in rule_segments:
        sql, params = rule_targets(segment, max_nodes=settings.max_rule_nodes)
        await session.execute(text(f"INSERT INTO wanted_members {sql}"), {**params, "as_of": as_of})
        segment_ids.append(segment.id)
    await session.execute(text("ANALYZE wanted_members"))
    watch.lap("members_wanted")
    changes = await apply_memberships(
        session,
        segment_ids=segment_ids,
        targets_sql="SELECT * FROM wanted_members",
        params={},
        at=at,
        materialize=False,
    )
    await session.execute(text("UPDATE segments SET status = 'deleted' WHERE kind = 'cluster' AND status = 'retired'"))
    watch.lap("members_write")
    return changes


async def record_sizes(session: AsyncSession, *, at: datetime) -> None:
    """A size sample per live segment, with what entered and left since the previous sample.

    Entries since then are members who entered since (one pass over the members, with the sizes)
    plus entries of stays that ended since: an entry is a member row or a history row, never both.
    """
    await session.execute(
        text(
            """
            WITH last AS (
                SELECT s.id AS segment_id, coalesce(max(z.measured_at), '-infinity') AS measured_at
                FROM segments s LEFT JOIN segment_sizes z ON z.segment_id = s.id
                WHERE s.status = 'active' GROUP BY s.id
            ),
            held AS (
                SELECT m.segment_id, count(*) AS size,
                       count(*) FILTER (WHERE m.entered_at > l.measured_at AND m.entered_at <= :at) AS entered
                FROM segment_members m JOIN last l ON l.segment_id = m.segment_id
                GROUP BY m.segment_id
            )
            INSERT INTO segment_sizes (segment_id, measured_at, size, entered, exited)
            SELECT l.segment_id, :at, coalesce(h.size, 0),
                   coalesce(h.entered, 0)
                   + (SELECT count(*) FROM membership_changes c WHERE c.segment_id = l.segment_id
                      AND c.change = 'entered' AND c.occurred_at > l.measured_at AND c.occurred_at <= :at),
                   (SELECT count(*) FROM membership_changes c WHERE c.segment_id = l.segment_id
                      AND c.change = 'exited' AND c.occurred_at > l.measured_at AND c.occurred_at <= :at)
            FROM last l LEFT JOIN held h ON h.segment_id = l.segment_id
            """
        ),
        {"at": at},
    )
