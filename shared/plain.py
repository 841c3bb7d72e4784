"""The plain shapes every producer of this platform sends, checked without pydantic.

A consumer's hot path parses its usual events with these (~1.5 us an event, where a model took
~7 us) and leaves anything else to its pydantic model, which then decides (and raises its
ValidationError): RFC 3339 times with at most microseconds and an offset, plain decimal amounts.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TypeGuard

PLAIN_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)", re.ASCII)
PLAIN_DECIMAL = re.compile(r"-?\d{1,20}(\.\d{1,12})?", re.ASCII)


def text_between(value: object, low: int, high: int) -> TypeGuard[str]:
    """A str of `low` to `high` characters."""
    return type(value) is str and low <= len(value) <= high


def plain_time(value: object) -> datetime | None:
    """The aware time a plain RFC 3339 string writes (its own offset kept); None for any other value."""
    if type(value) is not str or not PLAIN_TIME.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
