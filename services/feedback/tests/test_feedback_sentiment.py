"""Sentiment in Chinese and English: accuracy on the labelled sets, language detection, negation."""
# ruff: noqa: RUF001  (Chinese test sentences use full-width punctuation)

from __future__ import annotations

import pytest
from feedback.config import FeedbackSettings
from feedback.evaluate_sentiment import evaluate, labelled
from feedback.sentiment import analyse, detect_language
from feedback.service import sentiment_thresholds

# Measured 90.9% (en) and 93.9% (zh) when written; these floors catch a broken method or lexicon.
MINIMUM_ACCURACY = {"en": 0.85, "zh": 0.85}


@pytest.mark.parametrize("language", ["en", "zh"])
def test_sentiment_accuracy_on_the_labelled_set_meets_the_minimum(language: str) -> None:
    assert len(labelled(language)) >= 60  # type: ignore[arg-type]
    result = evaluate(language, FeedbackSettings())  # type: ignore[arg-type]
    assert result.accuracy >= MINIMUM_ACCURACY[language], result.misses


@pytest.mark.parametrize(
    ("text", "language"),
    [("Great mug", "en"), ("质量很好", "zh"), ("这个iPhone壳很好看", "zh"), ("Love it 很好", "zh"), ("12345", "en")],
)
def test_language_is_detected_from_the_script(text: str, language: str) -> None:
    assert detect_language(text) == language


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("质量不好", {"negative"}),
        ("用了一个月，没有任何问题", {"positive", "neutral"}),  # a negated complaint word is no complaint
        ("非常满意", {"positive"}),
        ("门店早上九点开门", {"neutral"}),
        ("I am not happy with this at all", {"negative"}),
        ("Not bad at all!", {"positive"}),
    ],
)
def test_negation_and_plain_statements_get_the_right_label(text: str, labels: set[str]) -> None:
    assert analyse(text, thresholds=sentiment_thresholds(FeedbackSettings())).label in labels


def test_scores_stay_between_minus_one_and_one() -> None:
    thresholds = sentiment_thresholds(FeedbackSettings())
    for text in (
        "太棒了太棒了太棒了，非常非常满意，完美，超值！" * 5,
        "垃圾垃圾，太差了，再也不买，失望透顶" * 5,
        "!!!",
    ):
        assert -1.0 <= analyse(text, thresholds=thresholds).score <= 1.0
