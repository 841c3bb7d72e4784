"""The CloudEvents 1.0 structured-mode envelope every Kafka message carries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Envelope(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime
    subject: str = Field(min_length=1)
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def decode(cls, raw: bytes | None) -> Envelope:
        """Parse a message value; raises ValueError (pydantic.ValidationError) when it is no envelope."""
        if raw is None:
            raise ValueError("message has no value")
        return cls.model_validate_json(raw)


def new_event(
    *,
    type: str,
    source: str,
    subject: str,
    data: BaseModel | dict[str, Any],
    id: str | None = None,
    time: datetime | None = None,
) -> Envelope:
    """Build an envelope; `data` models are dumped in JSON mode (Decimals become strings)."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return Envelope(
        id=id or str(uuid.uuid4()),
        source=source,
        type=type,
        time=time or datetime.now(UTC),
        subject=subject,
        data=payload,
    )
