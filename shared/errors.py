"""Errors named by field: checks beyond the request model report them the same way pydantic does."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class FieldError(BaseModel):
    field: str
    message: str
    type: str = "value_error"


def as_validation_errors(errors: list[FieldError]) -> list[dict[str, Any]]:
    """FieldErrors in FastAPI's RequestValidationError shape (loc under "body")."""
    return [{"loc": ("body", *e.field.split(".")), "msg": e.message, "type": e.type, "input": None} for e in errors]
