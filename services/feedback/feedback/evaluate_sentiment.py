"""Measure the sentiment method on the labelled sets in feedback/data: `python -m feedback.evaluate_sentiment`.

Prints, per language, the three-class accuracy (positive / neutral / negative), the accuracy on
polar sentences only, and each miss with `--misses`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from feedback.config import FeedbackSettings
from feedback.sentiment import Language, Sentiment, analyse
from feedback.service import sentiment_thresholds

DATA = Path(__file__).parent / "data"
LANGUAGES: tuple[Language, ...] = ("en", "zh")


@dataclass
class Evaluation:
    language: Language
    total: int = 0
    correct: int = 0
    polar_total: int = 0
    polar_correct: int = 0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[tuple[str, Sentiment, str]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def polar_accuracy(self) -> float:
        return self.polar_correct / self.polar_total if self.polar_total else 0.0


def labelled(language: Language) -> list[tuple[str, str]]:
    """(label, text) pairs; lines starting with # are comments."""
    path = DATA / f"sentiment_eval_{language}.tsv"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t", 1)
            rows.append((label, text))
    return rows


def evaluate(language: Language, settings: FeedbackSettings | None = None) -> Evaluation:
    thresholds = sentiment_thresholds(settings or FeedbackSettings())
    result = Evaluation(language)
    for label, text in labelled(language):
        sentiment = analyse(text, thresholds=thresholds)
        result.total += 1
        result.confusion[(label, sentiment.label)] += 1
        hit = sentiment.label == label
        result.correct += hit
        if label != "neutral":
            result.polar_total += 1
            result.polar_correct += hit
        if not hit:
            result.misses.append((label, sentiment, text))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--misses", action="store_true", help="list every misclassified sentence")
    args = parser.parse_args()
    for language in LANGUAGES:
        result = evaluate(language)
        print(
            f"{language}: accuracy {result.accuracy:.1%} ({result.correct}/{result.total}), "
            f"polar sentences {result.polar_accuracy:.1%} ({result.polar_correct}/{result.polar_total})"
        )
        if args.misses:
            for label, sentiment, text in result.misses:
                print(f"  expected {label:8} got {sentiment.label:8} {sentiment.score:+.3f}  {text}")


if __name__ == "__main__":
    main()
