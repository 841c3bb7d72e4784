"""Co-occurrence recommendations: better than popularity on structured data; bought items excluded."""

from __future__ import annotations

from profiles.evaluate_recommendations import evaluate, synthetic_shop
from profiles.recommendations import Signal, fit, recommend


def test_cooccurrence_beats_popular_items_on_a_structured_shop() -> None:
    result = evaluate(synthetic_shop(customers=800, products=200, groups=10, seed=3), k=10)
    assert result.customers > 700
    assert result.hit_rate > 2 * result.popular_hit_rate
    assert result.hit_rate > 0.3


def test_bought_items_are_never_recommended_and_popular_items_fill_up() -> None:
    signals = [
        Signal("a", "tea", True),
        Signal("a", "pot", True),
        Signal("b", "tea", True),
        Signal("b", "pot", True),
        Signal("c", "cup", True),
        Signal("d", "cup", True),
        Signal("e", "cup", True),
        Signal("me", "tea", True),
    ]
    model = fit(signals, view_weight=0.25, neighbours=10)
    picks = recommend(neighbours=model.neighbours, popular=model.popular, history={"tea": 1.0}, bought={"tea"}, limit=3)
    assert [(p.sku, p.because_of) for p in picks] == [("pot", "tea"), ("cup", None)]


def test_views_count_less_than_purchases() -> None:
    signals = [
        Signal("a", "tea", True),
        Signal("a", "pot", True),
        Signal("b", "tea", True),
        Signal("b", "cup", False),
        Signal("c", "tea", True),
        Signal("c", "cup", False),
    ]
    model = fit(signals, view_weight=0.25, neighbours=10)
    picks = recommend(neighbours=model.neighbours, popular=[], history={"tea": 1.0}, bought={"tea"}, limit=2)
    scores = {p.sku: p.score for p in picks}
    assert scores["pot"] > scores["cup"]
