"""BG/NBD, Gamma-Gamma, RFM map and cluster identities: the pure parts."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from segments import clusters, clv, rfm

CDNOW = clv.BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)  # Fader, Hardie & Lee (2005), weeks


def test_bgnbd_fit_recovers_the_parameters_it_was_simulated_with() -> None:
    rng = np.random.default_rng(11)
    true = clv.BgNbd(r=0.5, alpha=6.0, a=0.8, b=2.5)
    x, t_x, T = clv.simulate_bgnbd(true, 30_000, rng.uniform(30, 60, 30_000), rng)
    fitted = clv.fit_bgnbd(x, t_x, T)
    assert fitted.r == pytest.approx(true.r, rel=0.15)
    assert fitted.alpha == pytest.approx(true.alpha, rel=0.2)
    assert fitted.a == pytest.approx(true.a, rel=0.25)
    assert fitted.b == pytest.approx(true.b, rel=0.3)
    assert fitted.log_likelihood < 0


def test_gamma_gamma_fit_recovers_the_parameters_it_was_simulated_with() -> None:
    rng = np.random.default_rng(5)
    p, q, gamma, customers = 6.0, 4.0, 15.0, 20_000
    x = rng.integers(1, 8, customers).astype(np.float64)
    nu = rng.gamma(q, 1.0 / gamma, customers)
    # The mean of x Gamma(p, nu) spends is Gamma(p x, nu x).
    m_x = rng.gamma(p * x, 1.0 / (nu * x))
    fitted = clv.fit_gamma_gamma(x, m_x)
    assert fitted is not None
    assert fitted.p == pytest.approx(p, rel=0.15)
    assert fitted.q == pytest.approx(q, rel=0.15)
    assert fitted.gamma == pytest.approx(gamma, rel=0.25)


def test_conditional_expectation_matches_the_published_cdnow_example() -> None:
    # The paper's customer: x=2, t_x=30.43, T=38.86 weeks expects 1.226 purchases in the next 39 weeks.
    one = np.array([2.0]), np.array([30.43]), np.array([38.86])
    assert clv.expected_purchases(CDNOW, 39, *one)[0] == pytest.approx(1.226, abs=0.005)


def test_p_alive_is_one_without_repeat_purchases_and_falls_with_silence() -> None:
    x = np.array([0.0, 3.0, 3.0])
    t_x = np.array([0.0, 30.0, 5.0])
    T = np.array([40.0, 40.0, 40.0])
    alive = clv.p_alive(CDNOW, x, t_x, T)
    assert alive[0] == 1.0
    assert 0 < alive[2] < alive[1] < 1


def test_value_is_discounted_expected_purchases_times_spend() -> None:
    x, t_x, T = np.array([4.0]), np.array([300.0]), np.array([330.0])
    daily = clv.BgNbd(CDNOW.r, CDNOW.alpha * 7, CDNOW.a, CDNOW.b)
    spend = np.array([50.0])
    undiscounted = clv.discounted_value(daily, spend, x, t_x, T, horizon_days=365, annual_discount_rate=0.0)
    discounted = clv.discounted_value(daily, spend, x, t_x, T, horizon_days=365, annual_discount_rate=0.1)
    assert undiscounted[0] == pytest.approx(50.0 * clv.expected_purchases(daily, 365, x, t_x, T)[0])
    assert 0 < discounted[0] < undiscounted[0]


def test_rfm_map_names_every_cell_and_uses_all_eleven_segments() -> None:
    seen = {rfm.rfm_segment(r, f, m).name for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)}
    assert seen == {segment.name for segment in rfm.RFM_SEGMENTS}
    assert rfm.rfm_segment(5, 5, 5) == rfm.CHAMPIONS
    assert rfm.rfm_segment(1, 1, 1) == rfm.LOST
    assert rfm.rfm_segment(1, 5, 5) == rfm.CANT_LOSE
    assert rfm.rfm_segment(5, 1, 1) == rfm.NEW


def test_scores_put_ties_together_and_five_is_best() -> None:
    cuts = [Decimal(1), Decimal(1), Decimal(2), Decimal(4)]
    assert [rfm.score_higher_better(v, cuts) for v in (1, 2, 3, 4, 5)] == [1, 3, 4, 4, 5]
    days = [Decimal(10), Decimal(30), Decimal(60), Decimal(120)]
    assert [rfm.score_lower_better(v, days) for v in (0, 10, 11, 60, 500)] == [5, 5, 4, 3, 1]


def test_cluster_identities_follow_the_centres_not_the_label_order() -> None:
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 4.0, 4.0, 4.0], [0.0, 8.0, 0.0, 8.0, 0.0]])
    raw = np.vstack([c + rng.normal(0, 0.3, (300, 5)) for c in centres])
    first = clusters.fit(raw, k=3, k_range=(3, 3), fit_sample=10_000, silhouette_sample=500, seed=1)
    again = clusters.fit(raw[::-1].copy(), k=3, k_range=(3, 3), fit_sample=10_000, silhouette_sample=500, seed=99)
    first_raw = first.centres * first.scale + first.mean
    matches = clusters.match_identities(first_raw, again)
    assert sorted(m for m in matches if m is not None) == [0, 1, 2]
    for new_index, old_index in enumerate(matches):
        assert old_index is not None
        new_raw = again.centres[new_index] * again.scale + again.mean
        assert np.allclose(new_raw, first_raw[old_index], atol=0.2)


def test_k_is_chosen_by_silhouette_when_not_given() -> None:
    rng = np.random.default_rng(8)
    centres = np.array([[0.0] * 5, [6.0] * 5, [0.0, 6.0, 0.0, 6.0, 0.0], [6.0, 0.0, 6.0, 0.0, 6.0]])
    raw = np.vstack([c + rng.normal(0, 0.3, (200, 5)) for c in centres])
    fitted = clusters.fit(raw, k=None, k_range=(2, 6), fit_sample=10_000, silhouette_sample=800, seed=1)
    assert len(fitted.centres) == 4
    assert fitted.silhouette is not None and fitted.silhouette > 0.5


def test_clusters_are_described_from_their_centres() -> None:
    assert clusters.describe([-1.0, 1.2, 0.9, 0.1, 0.0]) == "recent, frequent, high spend"
    assert clusters.describe([0.0] * 5) == "average customers"


def test_bgnbd_gradient_is_the_derivative_of_the_log_likelihood() -> None:
    rng = np.random.default_rng(3)
    x, t_x, T = clv.simulate_bgnbd(
        clv.BgNbd(0.8, 60.0, 0.6, 2.5), 2_000, rng.integers(1, 730, 2_000).astype(np.float64), rng
    )
    theta = np.log([0.7, 50.0, 0.5, 2.0])

    def total(point: np.ndarray) -> float:
        r, alpha, a, b = np.exp(point)
        return float(clv.bgnbd_log_likelihood((r, alpha, a, b), x, t_x, T).sum())

    r, alpha, a, b = np.exp(theta)
    values, gradient = clv.bgnbd_log_likelihood_gradient((r, alpha, a, b), x, t_x, T)
    assert values.sum() == pytest.approx(total(theta))
    step = 1e-6
    numeric = [(total(theta + step * unit) - total(theta - step * unit)) / (2 * step) for unit in np.eye(4)]
    assert gradient.sum(axis=1) == pytest.approx(numeric, rel=1e-5, abs=1e-3)


def test_predictions_for_the_whole_base_equal_predictions_one_customer_at_a_time() -> None:
    """Expected purchases are computed per distinct (x, T) and shared: each customer still gets their own."""
    rng = np.random.default_rng(8)
    model, spend_model = clv.BgNbd(0.8, 60.0, 0.6, 2.5), clv.GammaGamma(2.0, 3.0, 20.0)
    x, t_x, T = clv.simulate_bgnbd(model, 5_000, rng.integers(1, 730, 5_000).astype(np.float64), rng)
    t_x = np.floor(t_x)
    m_x = np.where(x > 0, rng.gamma(2.0, 30.0, len(x)), 0.0)

    def predict(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, m_x: np.ndarray) -> clv.Predictions:
        return clv.predict(
            model,
            spend_model,
            x=x,
            t_x=t_x,
            T=T,
            m_x=m_x,
            purchases_days=90,
            horizon_days=365,
            annual_discount_rate=0.1,
        )

    everyone = predict(x, t_x, T, m_x)
    for i in range(0, len(x), 97):
        one = predict(x[i : i + 1], t_x[i : i + 1], T[i : i + 1], m_x[i : i + 1])
        assert one.expected_purchases[0] == everyone.expected_purchases[i]
        assert one.value[0] == everyone.value[i]
        assert one.p_alive[0] == everyone.p_alive[i]
    fractional = clv.expected_purchases(model, 39.5, x + 0.0, t_x + 0.25, T + 0.5)
    by_one = [
        clv.expected_purchases(model, 39.5, x[i : i + 1], t_x[i : i + 1] + 0.25, T[i : i + 1] + 0.5)[0]
        for i in range(0, len(x), 211)
    ]
    assert list(fractional[::211]) == by_one
