"""Sentiment of a free text, Chinese or English: a score from -1 to 1 and a label.

English: VADER (vaderSentiment; lexicon and rules shipped in the wheel), its `compound` score.
Chinese: snownlp's naive Bayes P(positive) mapped to 2p - 1, combined with a small opinion lexicon
(feedback.zh_lexicon) that handles negation and tells opinion from plain statements. The method and
its measured accuracy are in docs/feedback.md; `python -m feedback.evaluate_sentiment` measures it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from feedback import zh_lexicon

Language = Literal["en", "zh"]
Label = Literal["positive", "neutral", "negative"]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
# Lexicon sum s becomes s / sqrt(s² + alpha): one plain opinion word (1.0) gives about 0.45.
_LEXICON_ALPHA = 4.0
# Without any opinion word, naive Bayes still answers near 0 or 1 (it only knows two classes).
_NO_OPINION_WEIGHT = 0.2
_LEXICON_WEIGHT = 0.5


@dataclass(frozen=True)
class Thresholds:
    """A score at or above `positive` is positive, at or below `negative` negative, else neutral."""

    positive: float
    negative: float


@dataclass(frozen=True)
class Sentiment:
    score: float
    label: Label
    language: Language


def detect_language(text: str) -> Language:
    """Chinese when there are at least as many CJK characters as Latin words."""
    cjk = len(_CJK.findall(text))
    return "zh" if cjk and cjk >= len(_LATIN_WORD.findall(text)) else "en"


@cache
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def english_score(text: str) -> float:
    return float(_vader().polarity_scores(text)["compound"])


def _snownlp_score(text: str) -> float:
    from snownlp import SnowNLP

    return 2.0 * float(SnowNLP(text).sentiments) - 1.0


def _negated(clause_before: str) -> bool:
    window = clause_before[-zh_lexicon.NEGATION_WINDOW :]
    return any(negator in window for negator in zh_lexicon.NEGATORS)


def _intensity(clause_before: str) -> float:
    window = clause_before[-3:]
    return max((factor for word, factor in zh_lexicon.INTENSIFIERS.items() if word in window), default=1.0)


@cache
def _opinion_words() -> tuple[dict[str, float], int]:
    words = zh_lexicon.POSITIVE | zh_lexicon.NEGATIVE
    return words, max(len(word) for word in words)


def lexicon_hits(text: str) -> list[float]:
    """Weights of the opinion words in the text, longest match first, negation and intensity applied."""
    words, longest = _opinion_words()
    hits: list[float] = []
    clause_start = 0
    i = 0
    while i < len(text):
        if text[i] in zh_lexicon.CLAUSE_BREAKS:
            clause_start = i + 1
            i += 1
            continue
        for size in range(min(longest, len(text) - i), 0, -1):
            weight = words.get(text[i : i + size])
            if weight is None:
                continue
            before = text[clause_start:i]
            weight *= _intensity(before)
            if _negated(before):
                weight *= zh_lexicon.NEGATION_SCALAR
            hits.append(weight)
            i += size
            break
        else:
            i += 1
    return hits


def chinese_score(text: str) -> float:
    bayes = _snownlp_score(text)
    hits = lexicon_hits(text)
    if not hits:
        return _NO_OPINION_WEIGHT * bayes
    total = sum(hits)
    lexicon = total / math.sqrt(total * total + _LEXICON_ALPHA)
    return _LEXICON_WEIGHT * lexicon + (1.0 - _LEXICON_WEIGHT) * bayes


def label_for(score: float, thresholds: Thresholds) -> Label:
    if score >= thresholds.positive:
        return "positive"
    if score <= thresholds.negative:
        return "negative"
    return "neutral"


def analyse(text: str, *, thresholds: dict[Language, Thresholds]) -> Sentiment:
    language = detect_language(text)
    raw = chinese_score(text) if language == "zh" else english_score(text)
    score = round(max(-1.0, min(1.0, raw)), 4)
    return Sentiment(score=score, label=label_for(score, thresholds[language]), language=language)
