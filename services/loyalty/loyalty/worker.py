"""Loyalty's background work: the purchase consumer and the outbox relay."""

from __future__ import annotations

from loyalty.config import LoyaltySettings
from loyalty.handlers import HANDLERS
from shared.runtime import ServiceRuntime
from shared.topics import PURCHASES


def build_runtime(settings: LoyaltySettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=[PURCHASES], handlers=HANDLERS)
