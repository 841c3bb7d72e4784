"""Cluster segments: k-means on standardised log features, described in words, stable across fits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

Array = npt.NDArray[np.float64]

FEATURES = ("recency_days", "frequency", "monetary", "average_order_value", "tenure_days")
# Words for a centre far above (z >= 0.5) or below (z <= -0.5) the average of a feature.
WORDS = {
    "recency_days": ("lapsed", "recent"),
    "frequency": ("frequent", "one-off"),
    "monetary": ("high spend", "low spend"),
    "average_order_value": ("large baskets", "small baskets"),
    "tenure_days": ("long-standing", "new"),
}


def feature_matrix(recency_days: Array, frequency: Array, monetary: Array, tenure_days: Array) -> Array:
    """log1p of each feature (spend below zero counts as zero), one row per customer."""
    spend = np.maximum(monetary, 0.0)
    order_value = spend / np.maximum(frequency, 1.0)
    columns = (recency_days, frequency, spend, order_value, tenure_days)
    return np.asarray(np.log1p(np.column_stack([np.maximum(c, 0.0) for c in columns])), dtype=np.float64)


@dataclass(frozen=True)
class Clustering:
    mean: Array
    scale: Array
    centres: Array  # standardised space
    silhouette: float | None

    def standardise(self, raw: Array) -> Array:
        return np.asarray((raw - self.mean) / self.scale, dtype=np.float64)

    def assign(self, raw: Array) -> npt.NDArray[np.int64]:
        z = self.standardise(raw)
        distances = ((z[:, None, :] - self.centres[None, :, :]) ** 2).sum(axis=2)
        return np.asarray(distances.argmin(axis=1), dtype=np.int64)


def fit(
    raw: Array,
    *,
    k: int | None,
    k_range: tuple[int, int],
    fit_sample: int,
    silhouette_sample: int,
    seed: int,
    threads: int = 1,
) -> Clustering:
    # OpenMP threads fighting PostgreSQL (and each other) for two cores made k-means slower, not faster.
    with threadpool_limits(threads):
        return _fit(raw, k=k, k_range=k_range, fit_sample=fit_sample, silhouette_sample=silhouette_sample, seed=seed)


def _fit(
    raw: Array,
    *,
    k: int | None,
    k_range: tuple[int, int],
    fit_sample: int,
    silhouette_sample: int,
    seed: int,
) -> Clustering:
    rng = np.random.default_rng(seed)
    mean = raw.mean(axis=0)
    scale = raw.std(axis=0)
    scale[scale == 0] = 1.0
    z = (raw - mean) / scale
    sample = z[rng.choice(len(z), fit_sample, replace=False)] if len(z) > fit_sample else z
    chosen, score = k, None
    if not chosen:
        # k by silhouette on a small sample: each candidate costs one cheap fit there.
        small = (
            sample[rng.choice(len(sample), silhouette_sample, replace=False)]
            if len(sample) > silhouette_sample
            else sample
        )
        scores = {}
        for count in range(k_range[0], min(k_range[1], len(small) - 1) + 1):
            labels = KMeans(n_clusters=count, n_init=1, random_state=seed).fit_predict(small)
            if len(set(labels.tolist())) > 1:
                scores[count] = float(silhouette_score(small, labels))
        chosen = max(scores, key=lambda c: scores[c]) if scores else min(2, len(sample))
        score = scores.get(chosen)
    model = KMeans(n_clusters=chosen, n_init=1, random_state=seed).fit(sample)
    return Clustering(mean, scale, np.asarray(model.cluster_centers_, dtype=np.float64), score)


def match_identities(previous_raw_centres: Array | None, new: Clustering) -> list[int | None]:
    """For each new cluster, the index of the previous cluster it continues (Hungarian assignment
    on distances in the new standardised space), or None for a cluster with no predecessor."""
    if previous_raw_centres is None or len(previous_raw_centres) == 0:
        return [None] * len(new.centres)
    old = new.standardise(previous_raw_centres)
    cost = ((new.centres[:, None, :] - old[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    matched: list[int | None] = [None] * len(new.centres)
    for row, col in zip(rows, cols, strict=True):
        matched[int(row)] = int(col)
    return matched


def describe(centre: Sequence[float], features: Sequence[str] = FEATURES) -> str:
    """A centre in words, e.g. 'recent, frequent, high spend'; 'average customers' when nothing stands out."""
    words = []
    for name, z in zip(features, centre, strict=True):
        high, low = WORDS[name]
        if z >= 0.5:
            words.append(high)
        elif z <= -0.5:
            words.append(low)
    return ", ".join(words) or "average customers"
