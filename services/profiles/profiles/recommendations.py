"""Item-to-item recommendations from co-occurrence: customers who bought (or viewed) X also bought Y.

Each customer is a row of weights over products (1 for bought, `view_weight` for only viewed);
the similarity of two products is the sum over customers of the product of their weights, divided by
sqrt(customers of one x customers of the other) (cosine on presence, so popular products do not
dominate, while views still count `view_weight` as much as purchases). A customer's candidates are scored by the sum
of their items' similarities; what they already bought is excluded; popular products fill the rest.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from sqlalchemy import delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.config import ProfilesSettings
from profiles.models import Affinity, ItemNeighbour, PopularItem, Product

POPULAR_REASON = "popular with other customers"


@dataclass(frozen=True)
class Signal:
    """One customer's relation to one product."""

    customer: str
    sku: str
    bought: bool


@dataclass
class CooccurrenceModel:
    neighbours: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    popular: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Recommendation:
    sku: str
    score: float
    because_of: str | None  # the customer's product that contributed most; None for popular fill


def fit(signals: Iterable[Signal], *, view_weight: float, neighbours: int) -> CooccurrenceModel:
    weights: dict[tuple[str, str], float] = {}
    for s in signals:
        weight = 1.0 if s.bought else view_weight
        weights[s.customer, s.sku] = max(weights.get((s.customer, s.sku), 0.0), weight)
    if not weights:
        return CooccurrenceModel()
    customers = {c: i for i, c in enumerate(sorted({c for c, _ in weights}))}
    skus = sorted({s for _, s in weights})
    columns = {s: j for j, s in enumerate(skus)}
    rows = np.fromiter((customers[c] for c, _ in weights), dtype=np.int64, count=len(weights))
    cols = np.fromiter((columns[s] for _, s in weights), dtype=np.int64, count=len(weights))
    values = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
    matrix = sparse.csr_matrix((values, (rows, cols)), shape=(len(customers), len(skus)))
    # Normalised by how many customers touched each product (not by the weights), so views stay weaker.
    customers_per_sku = np.asarray((matrix > 0).sum(axis=0), dtype=np.float64).ravel()
    scaled = matrix @ sparse.diags(1.0 / np.sqrt(np.maximum(customers_per_sku, 1.0)))
    similarity = (scaled.T @ scaled).tocsr()
    similarity.setdiag(0)
    similarity.eliminate_zeros()
    model = CooccurrenceModel()
    for j, sku in enumerate(skus):
        start, end = similarity.indptr[j], similarity.indptr[j + 1]
        idx, sims = similarity.indices[start:end], similarity.data[start:end]
        if len(sims) > neighbours:
            keep = np.argpartition(-sims, neighbours)[:neighbours]
            idx, sims = idx[keep], sims[keep]
        ranked = sorted(zip(idx.tolist(), sims.tolist(), strict=True), key=lambda pair: (-pair[1], skus[pair[0]]))
        model.neighbours[sku] = [(skus[k], round(float(sim), 6)) for k, sim in ranked]
    buyers: dict[str, float] = defaultdict(float)
    for (_, sku), weight in weights.items():
        if weight == 1.0:
            buyers[sku] += 1.0
    model.popular = sorted(buyers.items(), key=lambda pair: (-pair[1], pair[0]))
    return model


def recommend(
    *,
    neighbours: Mapping[str, list[tuple[str, float]]],
    popular: Iterable[tuple[str, float]],
    history: Mapping[str, float],
    bought: set[str],
    limit: int,
) -> list[Recommendation]:
    """Score candidates from the customer's history (sku -> weight); fill up with popular products."""
    scores: dict[str, float] = defaultdict(float)
    best: dict[str, tuple[float, str]] = {}
    for sku, weight in history.items():
        for other, similarity in neighbours.get(sku, []):
            if other in bought:
                continue
            contribution = weight * similarity
            scores[other] += contribution
            if contribution > best.get(other, (0.0, ""))[0]:
                best[other] = (contribution, sku)
    ranked = sorted(scores, key=lambda sku: (-scores[sku], sku))[:limit]
    chosen = [Recommendation(sku, round(scores[sku], 6), best[sku][1]) for sku in ranked]
    taken = set(ranked) | bought
    for sku, _ in popular:
        if len(chosen) >= limit:
            break
        if sku not in taken:
            chosen.append(Recommendation(sku, 0.0, None))
            taken.add(sku)
    return chosen


async def affinity_changes(session: AsyncSession) -> int | None:
    """Rows ever inserted, updated or deleted in affinities (the statistics collector's counters).

    Read before the rebuild's snapshot, and a transaction's changes are counted only once it ended,
    so a model built after reading N includes every change counted in N; a change after it makes the
    counter grow (aborted changes count too: at worst an extra rebuild). None if not available.
    """
    value = await session.scalar(
        text(
            "select n_tup_ins + n_tup_upd + n_tup_del from pg_stat_user_tables where relid = to_regclass('affinities')"
        )
    )
    return int(value) if value is not None else None


async def rebuild_recommendations(session: AsyncSession, *, settings: ProfilesSettings) -> int:
    """Refit from every customer's products and replace the stored neighbours; returns the product count."""
    rows = await session.execute(
        select(Affinity.customer_id, Affinity.key, Affinity.purchased).where(Affinity.kind == "product")
    )
    signals = [Signal(customer, sku, purchased > 0) for customer, sku, purchased in rows]
    model = fit(signals, view_weight=settings.recommendation_view_weight, neighbours=settings.recommendation_neighbours)
    await session.execute(delete(ItemNeighbour))
    await session.execute(delete(PopularItem))
    pairs = [
        {"sku": sku, "neighbour": other, "score": score}
        for sku, similar in model.neighbours.items()
        for other, score in similar
    ]
    for start in range(0, len(pairs), 5000):
        await session.execute(insert(ItemNeighbour), pairs[start : start + 5000])
    if model.popular:
        await session.execute(insert(PopularItem), [{"sku": s, "score": n} for s, n in model.popular])
    return len(model.neighbours)


async def recommendations_for(
    session: AsyncSession, *, customer_id: str, limit: int, settings: ProfilesSettings
) -> list[dict[str, object]]:
    rows = await session.execute(
        select(Affinity.key, Affinity.purchased, Affinity.views)
        .where(Affinity.customer_id == customer_id)
        .where(Affinity.kind == "product")
    )
    history: dict[str, float] = {}
    bought: set[str] = set()
    for sku, purchased, _views in rows:
        history[sku] = 1.0 if purchased > 0 else settings.recommendation_view_weight
        if purchased > 0:
            bought.add(sku)
    neighbours: dict[str, list[tuple[str, float]]] = defaultdict(list)
    if history:
        found = await session.execute(
            select(ItemNeighbour.sku, ItemNeighbour.neighbour, ItemNeighbour.score).where(
                ItemNeighbour.sku.in_(list(history))
            )
        )
        for sku, other, score in found:
            neighbours[sku].append((other, score))
    popular = (
        await session.execute(
            select(PopularItem.sku, PopularItem.score)
            .order_by(PopularItem.score.desc(), PopularItem.sku)
            .limit(limit + len(bought))
        )
    ).all()
    chosen = recommend(
        neighbours=neighbours,
        popular=[(sku, score) for sku, score in popular],
        history=history,
        bought=bought,
        limit=limit,
    )
    return await _describe(session, chosen, bought)


async def _describe(session: AsyncSession, chosen: list[Recommendation], bought: set[str]) -> list[dict[str, object]]:
    skus = {r.sku for r in chosen} | {r.because_of for r in chosen if r.because_of}
    products = {p.sku: p for p in (await session.execute(select(Product).where(Product.sku.in_(skus)))).scalars().all()}

    def label(sku: str) -> str:
        product = products.get(sku)
        return product.name if product and product.name else sku

    described: list[dict[str, object]] = []
    for r in chosen:
        if r.because_of is None:
            reason = POPULAR_REASON
        elif r.because_of in bought:
            reason = f"bought together with {label(r.because_of)}"
        else:
            reason = f"often bought by customers who viewed {label(r.because_of)}"
        product = products.get(r.sku)
        described.append(
            {
                "sku": r.sku,
                "name": product.name if product else None,
                "category": product.category if product else None,
                "score": r.score,
                "reason": reason,
            }
        )
    return described
