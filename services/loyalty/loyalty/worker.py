"""Loyalty's background work: the purchase consumer and the outbox relay."""

from __future__ import annotations

from loyalty.config import LoyaltySettings
from loyalty.handlers import HANDLERS
from shared.runtime import ServiceRuntime, run_worker
from shared.topics import PURCHASES


def build_runtime(settings: LoyaltySettings) -> ServiceRuntime:
    return ServiceRuntime(settings, consumes=[PURCHASES], handlers=HANDLERS)


if __name__ == "__main__":
    run_worker(build_runtime(LoyaltySettings()))
