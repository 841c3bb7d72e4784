"""BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader, Hardie & Lee 2005b; Colombo & Jiang 1999).

Pure numpy/scipy: maximum likelihood over log-parameters with L-BFGS-B on a vectorised
log-likelihood. Customers with the same (x, t_x, T) are folded into one weighted row first, which
turns a million customers into a few hundred thousand distinct rows when times are whole days.

Notation per customer: x repeat purchase occasions (distinct days after the first), t_x time of the
last one since the first purchase, T time from the first purchase to the end of calibration; m_x
the mean spend of the repeat occasions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln, hyp2f1

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = 0.0


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    gamma: float
    log_likelihood: float = 0.0

    def population_mean(self) -> float:
        return self.p * self.gamma / (self.q - 1) if self.q > 1 else float("nan")


def _fold(*columns: Array) -> tuple[list[Array], Array]:
    """Distinct rows and how many customers share each."""
    stacked = np.column_stack(columns)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(np.float64)


def bgnbd_log_likelihood(params: tuple[float, float, float, float], x: Array, t_x: Array, T: Array) -> Array:
    """Per-customer log-likelihood, equation (6) of Fader, Hardie & Lee (2005), in log space."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    xr = x[repeat]
    a4[repeat] = np.log(a) - np.log(b + xr - 1) - (r + xr) * np.log(alpha + t_x[repeat])
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=np.float64)


def bgnbd_log_likelihood_gradient(
    params: tuple[float, float, float, float], x: Array, t_x: Array, T: Array
) -> tuple[Array, Array]:
    """Per-customer log-likelihood and its gradient with respect to (log r, log alpha, log a, log b).

    The exact derivative of equation (6) (digamma for the gamma and beta functions; the two terms of
    the log-sum weighted by their shares): one evaluation per optimiser step instead of five for
    finite differences.
    """
    r, alpha, a, b = params
    repeat = x > 0
    log_at = np.log(alpha + T)
    log_atx = np.log(alpha + t_x)
    a3 = -(r + x) * log_at
    a4 = np.full_like(x, -np.inf)
    bx1 = np.where(repeat, b + x - 1, 1.0)
    a4[repeat] = np.log(a) - np.log(bx1[repeat]) - (r + x[repeat]) * log_atx[repeat]
    mix = np.logaddexp(a3, a4)
    w3 = np.exp(a3 - mix)
    w4 = np.exp(a4 - mix)
    ll = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + betaln(a, b + x) - betaln(a, b) + mix
    psi_abx = digamma(a + b + x)
    psi_ab = digamma(a + b)
    d_r = digamma(r + x) - digamma(r) + np.log(alpha) - w3 * log_at - w4 * log_atx
    d_alpha = r / alpha - w3 * (r + x) / (alpha + T) - w4 * (r + x) / (alpha + t_x)
    d_a = psi_ab - psi_abx + w4 / a
    d_b = digamma(b + x) - psi_abx - digamma(b) + psi_ab - w4 / bx1
    gradient = np.stack([r * d_r, alpha * d_alpha, a * d_a, b * d_b])
    return np.asarray(ll, dtype=np.float64), np.asarray(gradient, dtype=np.float64)


def fit_bgnbd(x: Array, t_x: Array, T: Array) -> BgNbd:
    (ux, ut, uT), weights = _fold(x, t_x, T)
    total = weights.sum()

    def objective(theta: Array) -> tuple[float, Array]:
        r, alpha, a, b = np.exp(theta)
        ll, gradient = bgnbd_log_likelihood_gradient((r, alpha, a, b), ux, ut, uT)
        return float(-(weights * ll).sum() / total), -(gradient @ weights) / total

    start = np.log([1.0, max(float(np.mean(T)), 1e-3), 1.0, 1.0])
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 4)
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BgNbd(r, alpha, a, b, float(-result.fun * total))


def gamma_gamma_log_likelihood(params: tuple[float, float, float], x: Array, m_x: Array) -> Array:
    p, q, gamma = params
    px = p * x
    return np.asarray(
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(gamma)
        + (px - 1) * np.log(m_x)
        + px * np.log(x)
        - (px + q) * np.log(gamma + m_x * x),
        dtype=np.float64,
    )


def fit_gamma_gamma(x: Array, m_x: Array) -> GammaGamma | None:
    """Fit on repeat customers with a positive mean spend; None when there are too few."""
    usable = (x > 0) & (m_x > 0)
    if usable.sum() < 10:
        return None
    (ux, um), weights = _fold(x[usable], m_x[usable])
    total = weights.sum()

    def objective(theta: Array) -> float:
        p, q, gamma = np.exp(theta)
        return float(-(weights * gamma_gamma_log_likelihood((p, q, gamma), ux, um)).sum() / total)

    start = np.log([1.0, 2.0, max(float(np.mean(um)), 1e-3)])
    result = minimize(objective, start, method="L-BFGS-B", bounds=[(-12.0, 12.0), (-12.0, 12.0), (-12.0, 20.0)])
    p, q, gamma = (float(v) for v in np.exp(result.x))
    return GammaGamma(p, q, gamma, float(-result.fun * total))


def _death_odds(model: BgNbd, x: Array, t_x: Array, T: Array) -> Array:
    """delta(x>0) * a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x): P(dead)/P(alive) given the history."""
    odds = np.zeros_like(x)
    repeat = x > 0
    xr = x[repeat]
    log_odds = (
        np.log(model.a)
        - np.log(model.b + xr - 1)
        + (model.r + xr) * (np.log(model.alpha + T[repeat]) - np.log(model.alpha + t_x[repeat]))
    )
    odds[repeat] = np.exp(np.minimum(log_odds, 700.0))
    return odds


def p_alive(model: BgNbd, x: Array, t_x: Array, T: Array) -> Array:
    return np.asarray(1.0 / (1.0 + _death_odds(model, x, t_x, T)), dtype=np.float64)


def _pairs(x: Array, T: Array) -> tuple[Array, Array, npt.NDArray[np.intp]]:
    """Distinct (x, T) pairs and, per customer, the index of theirs.

    Whole-day histories of a million customers have only thousands of distinct pairs, so the
    hypergeometric function (the costly part of expected purchases) runs per pair, not per customer.
    """
    if len(x) and x.min() >= 0 and T.min() >= 0 and x.max() < 2**20 and T.max() < 2**40:
        whole = np.array_equal(x, np.floor(x)) and np.array_equal(T, np.floor(T))
        if whole:
            keys, inverse = np.unique(x.astype(np.int64) * 2**40 + T.astype(np.int64), return_inverse=True)
            return (keys // 2**40).astype(np.float64), (keys % 2**40).astype(np.float64), inverse.reshape(-1)
    pairs, inverse = np.unique(np.column_stack([x, T]), axis=0, return_inverse=True)
    return pairs[:, 0].copy(), pairs[:, 1].copy(), inverse.reshape(-1)


def _unconditional_purchases(model: BgNbd, t: float, x: Array, T: Array) -> Array:
    """E[Y(t)] before weighting by P(alive): the part of equation (10) that depends on (x, T) only."""
    r, alpha, a, b = model.r, model.alpha, model.a, model.b
    if abs(a - 1) < 1e-9:
        a = 1.0 + 1e-9  # the closed form divides by a - 1 (it holds on both sides of 1)
    z = t / (alpha + T + t)
    head = (a + b + x - 1) / (a - 1)
    tail = 1 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp2f1(r + x, b + x, a + b + x - 1, z)
    return np.asarray(np.nan_to_num(np.maximum(head * tail, 0.0)), dtype=np.float64)


def expected_purchases(model: BgNbd, t: float, x: Array, t_x: Array, T: Array) -> Array:
    """E[Y(t) | x, t_x, T], equation (10) of Fader, Hardie & Lee (2005)."""
    if t <= 0:
        return np.zeros_like(x)
    ux, uT, inverse = _pairs(x, T)
    values = _unconditional_purchases(model, t, ux, uT)[inverse] / (1 + _death_odds(model, x, t_x, T))
    return np.asarray(values, dtype=np.float64)


def expected_spend(model: GammaGamma | None, x: Array, m_x: Array, fallback: float) -> Array:
    """E[M | x, m_x]: the Gamma-Gamma posterior mean spend per purchase occasion."""
    if model is None or model.q <= 1:
        return np.where(x > 0, m_x, fallback)
    p, q, gamma = model.p, model.q, model.gamma
    posterior = (gamma + m_x * x) * p / (p * x + q - 1)
    return np.asarray(np.where((x > 0) & (m_x > 0), posterior, model.population_mean()), dtype=np.float64)


def discounted_value(
    model: BgNbd,
    spend: Array,
    x: Array,
    t_x: Array,
    T: Array,
    *,
    horizon_days: int,
    annual_discount_rate: float,
    periods: int = 12,
) -> Array:
    """Sum over `periods` equal steps of expected purchases in the step times spend, discounted per step."""
    step = horizon_days / periods
    rate = (1 + annual_discount_rate) ** (horizon_days / 365 / periods) - 1
    ux, uT, inverse = _pairs(x, T)
    alive = 1 + _death_odds(model, x, t_x, T)
    value = np.zeros_like(x)
    previous = np.zeros_like(x)
    for i in range(1, periods + 1):
        current = _unconditional_purchases(model, step * i, ux, uT)[inverse] / alive
        value += (current - previous) * spend / (1 + rate) ** i
        previous = current
    return value


def simulate_bgnbd(
    model: BgNbd, customers: int, T: float | Array, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    """(x, t_x, T) drawn from the BG/NBD process itself, for testing the fit."""
    horizon = np.broadcast_to(np.asarray(T, dtype=np.float64), (customers,)).copy()
    rate = rng.gamma(model.r, 1.0 / model.alpha, customers)
    dropout = rng.beta(model.a, model.b, customers)
    x = np.zeros(customers)
    t_x = np.zeros(customers)
    clock = np.zeros(customers)
    active = np.ones(customers, dtype=bool)
    while active.any():
        clock[active] += rng.exponential(1.0 / rate[active])
        bought = active & (clock <= horizon)
        x[bought] += 1
        t_x[bought] = clock[bought]
        active = bought & (rng.random(customers) >= dropout)
    return x, t_x, horizon


@dataclass(frozen=True)
class Predictions:
    p_alive: Array
    expected_purchases: Array
    value: Array


def predict(
    bgnbd: BgNbd,
    gamma_gamma: GammaGamma | None,
    *,
    x: Array,
    t_x: Array,
    T: Array,
    m_x: Array,
    purchases_days: int,
    horizon_days: int,
    annual_discount_rate: float,
) -> Predictions:
    """Per customer (times in days): P(alive), expected purchases in `purchases_days`, discounted value."""
    fallback = float(np.mean(m_x[x > 0])) if (x > 0).any() else 0.0
    spend = expected_spend(gamma_gamma, x, m_x, fallback)
    return Predictions(
        p_alive(bgnbd, x, t_x, T),
        expected_purchases(bgnbd, purchases_days, x, t_x, T),
        discounted_value(bgnbd, spend, x, t_x, T, horizon_days=horizon_days, annual_discount_rate=annual_discount_rate),
    )
