"""Membership events for the outbox, built set-based in SQL from templates that shared/envelope.py makes.

A recompute may publish millions of segment.entered / segment.exited events, too many to build one
by one in Python. So each (segment, event type) gets a template: the exact bytes `Envelope.encode()`
produces for a membership event whose per-event values are placeholders, split at the placeholders.
SQL then only concatenates `part0 || value0 || part1 || ...` per changed row. The envelope's field
list and order, its constants (specversion, datacontenttype, source) and the data fields
(`events.SegmentMembershipChanged`) therefore stay defined in one place each; nothing here
repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import orjson
from pydantic import AwareDatetime, TypeAdapter

from segments.events import SegmentMembershipChanged
from shared.envelope import new_event

SOURCE = "cx.segments"

# The values that differ per event, in the order SQL supplies them; each is a JSON value (quoted text).
SLOTS = ("id", "time", "subject", "customer_id", "reason", "occurred_at")
_TEXT_PLACEHOLDERS = {"id": "\x01id\x01", "subject": "\x01subject\x01", "reason": "\x01reason\x01"}
_TEXT_PLACEHOLDERS["customer_id"] = "\x01customer\x01"
# Timestamps cannot be placeholder text: two instants no real event has, rendered as the envelope renders them.
_TIME_PLACEHOLDERS = {
    "time": datetime(1901, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
    "occurred_at": datetime(1902, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
}
_TIME_JSON: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def json_time(moment: datetime) -> str:
    """A timestamp as `Envelope.encode()` serialises it (a quoted JSON string)."""
    return _json(_TIME_JSON.dump_python(moment, mode="json"))


def _json(value: str) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class Template:
    """`parts[0] + value(slots[0]) + parts[1] + ... + parts[-1]` is the encoded envelope."""

    slots: tuple[str, ...]
    parts: tuple[str, ...]

    def render(self, values: dict[str, str]) -> str:
        """The payload for JSON `values` per slot, in Python (what the SQL computes; used by tests)."""
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out += [values[slot], part]
        return "".join(out)


@lru_cache(maxsize=4096)
def membership_template(event_type: str, segment_id: str, segment_key: str, segment_name: str, kind: str) -> Template:
    data = SegmentMembershipChanged(
        customer_id=_TEXT_PLACEHOLDERS["customer_id"],
        segment_id=segment_id,
        segment_key=segment_key,
        segment_name=segment_name,
        kind=kind,
        reason=_TEXT_PLACEHOLDERS["reason"],
        occurred_at=_TIME_PLACEHOLDERS["occurred_at"],
    )
    encoded = (
        new_event(
            type=event_type,
            source=SOURCE,
            subject=_TEXT_PLACEHOLDERS["subject"],
            id=_TEXT_PLACEHOLDERS["id"],
            time=_TIME_PLACEHOLDERS["time"],
            data=data,
        )
        .encode()
        .decode()
    )
    markers = {slot: json_time(value) for slot, value in _TIME_PLACEHOLDERS.items()}
    markers.update({slot: _json(value) for slot, value in _TEXT_PLACEHOLDERS.items()})
    found = []
    for slot, marker in markers.items():
        at = encoded.find(marker)
        if at < 0 or encoded.find(marker, at + 1) >= 0:
            raise ValueError(f"placeholder for {slot} not found exactly once in the envelope")
        found.append((at, slot, marker))
    found.sort()
    parts, slots, position = [], [], 0
    for at, slot, marker in found:
        parts.append(encoded[position:at])
        slots.append(slot)
        position = at + len(marker)
    parts.append(encoded[position:])
    if tuple(slots) != SLOTS:
        raise ValueError(f"envelope fields are in an unexpected order: {slots}")
    return Template(tuple(slots), tuple(parts))


def payload_sql(parts: str, values: dict[str, str]) -> str:
    """SQL concatenating the template parts (`{parts}.part0`, ...) with each slot's JSON text expression."""
    pieces = [f"{parts}.part0"]
    for i, slot in enumerate(SLOTS, start=1):
        pieces += [values[slot], f"{parts}.part{i}"]
    return " || ".join(pieces)


PART_COUNT = len(SLOTS) + 1
