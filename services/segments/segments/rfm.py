"""RFM: scores 1-5 against quintile cut-points of the whole base, and the named RFM map.

Scores: frequency and monetary score 1 + (number of cut-points strictly below the value); recency
scores 5 - (number of cut-points strictly below the days since the last purchase), so 5 is always
best. Cut-points are percentile_disc at 20/40/60/80 %, real values from the data, so ties always get
the same score and a single customer scored later against the stored cut-points gets exactly what a
full computation would give them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

QUANTILES = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class RfmSegment:
    key: str
    name: str
    description: str


CHAMPIONS = RfmSegment("rfm-champions", "Champions", "bought recently, buy often and spend the most")
LOYAL = RfmSegment("rfm-loyal", "Loyal", "buy regularly and spend well")
POTENTIAL_LOYALIST = RfmSegment("rfm-potential-loyalist", "Potential Loyalist", "recent customers with average spend")
NEW = RfmSegment("rfm-new", "New", "bought very recently, but little so far")
PROMISING = RfmSegment("rfm-promising", "Promising", "recent shoppers who have not spent much yet")
NEED_ATTENTION = RfmSegment("rfm-need-attention", "Need Attention", "average recency, frequency and spend")
ABOUT_TO_SLEEP = RfmSegment("rfm-about-to-sleep", "About to Sleep", "below average recency and spend")
AT_RISK = RfmSegment("rfm-at-risk", "At Risk", "spent well and often, but long ago")
CANT_LOSE = RfmSegment("rfm-cant-lose-them", "Can't Lose Them", "were among the best, have not come back for long")
HIBERNATING = RfmSegment("rfm-hibernating", "Hibernating", "last purchase long ago, few orders, low spend")
LOST = RfmSegment("rfm-lost", "Lost", "lowest recency, frequency and spend")

RFM_SEGMENTS = (
    CHAMPIONS,
    LOYAL,
    POTENTIAL_LOYALIST,
    NEW,
    PROMISING,
    NEED_ATTENTION,
    ABOUT_TO_SLEEP,
    AT_RISK,
    CANT_LOSE,
    HIBERNATING,
    LOST,
)

# Rows: R score 5..1; columns: FM score 1..5, where FM = round half up of (F + M) / 2.
RFM_MAP: dict[int, tuple[RfmSegment, ...]] = {
    5: (NEW, POTENTIAL_LOYALIST, POTENTIAL_LOYALIST, CHAMPIONS, CHAMPIONS),
    4: (PROMISING, POTENTIAL_LOYALIST, POTENTIAL_LOYALIST, LOYAL, CHAMPIONS),
    3: (ABOUT_TO_SLEEP, NEED_ATTENTION, NEED_ATTENTION, LOYAL, LOYAL),
    2: (HIBERNATING, ABOUT_TO_SLEEP, AT_RISK, AT_RISK, CANT_LOSE),
    1: (LOST, HIBERNATING, AT_RISK, CANT_LOSE, CANT_LOSE),
}


def fm_score(f_score: int, m_score: int) -> int:
    return (f_score + m_score + 1) // 2


def rfm_segment(r_score: int, f_score: int, m_score: int) -> RfmSegment:
    return RFM_MAP[r_score][fm_score(f_score, m_score) - 1]


def score_higher_better(value: Decimal | int, cuts: Sequence[Decimal]) -> int:
    return 1 + sum(1 for cut in cuts if value > cut)


def score_lower_better(value: Decimal | int, cuts: Sequence[Decimal]) -> int:
    return 5 - sum(1 for cut in cuts if value > cut)


def days_between(earlier: datetime, later: datetime) -> int:
    """Whole UTC calendar days, as the SQL does with ::date arithmetic."""
    return (later.astimezone(UTC).date() - earlier.astimezone(UTC).date()).days


def sql_score_higher_better(column: str, cuts_param: str) -> str:
    return "1 + " + " + ".join(f"({column} > ({cuts_param})[{i}])::int" for i in range(1, 5))


def sql_score_lower_better(column: str, cuts_param: str) -> str:
    return "5 - (" + " + ".join(f"({column} > ({cuts_param})[{i}])::int" for i in range(1, 5)) + ")"


def sql_segment_case(r: str, f: str, m: str) -> str:
    """The RFM map in SQL, generated from RFM_MAP so Python and SQL cannot disagree.

    One subscript of a 25-name array (row R 5..1, column FM 1..5) instead of a 25-branch CASE:
    a million customers are named in one array lookup each.
    """
    names = [segment.name.replace("'", "''") for r_score in (5, 4, 3, 2, 1) for segment in RFM_MAP[r_score]]
    array = "ARRAY[" + ", ".join(f"'{name}'" for name in names) + "]::text[]"
    return f"({array})[(5 - ({r})) * 5 + (({f}) + ({m}) + 1) / 2]"


SEGMENT_BY_NAME = {segment.name: segment for segment in RFM_SEGMENTS}
