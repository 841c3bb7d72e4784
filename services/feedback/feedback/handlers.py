"""What feedback does with each event it consumes (nothing yet: its issue builds the handlers)."""

from __future__ import annotations

from shared.consumer import HandlerMap

HANDLERS: HandlerMap = {}
