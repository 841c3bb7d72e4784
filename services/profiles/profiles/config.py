from __future__ import annotations

from decimal import Decimal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class ProfilesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROFILES_", extra="ignore", populate_by_name=True)

    service_name: str = "profiles"
    database_url: str = default_database_url("profiles")
    port: int = 8002

    # Lifecycle stages (docs/profiles.md): checked in this order, first match wins.
    churned_after_days: int = 180  # no purchase for longer than this: churned
    at_risk_after_days: int = 90  # no purchase for longer than this: at_risk
    loyal_min_orders: int = 5  # at least this many orders (and recent): loyal
    repeat_min_orders: int = 2  # at least this many orders: repeat
    new_customer_days: int = 30  # one order, first purchase within this many days: new (else active)
    lifecycle_interval_seconds: float = 60.0  # how often stages are re-evaluated as time passes

    # Consumed batches: the handlers are set-based, so a bigger batch costs little more than a small one.
    consumer_batch_size: int = Field(2000, validation_alias=AliasChoices("CX_CONSUMER_BATCH_SIZE"))

    # profile.updated: dirty profiles are published in batches, coalescing bursts of events.
    # A collection walks the live batch (2,000 envelopes, models, rows) whenever it runs: at 50,000
    # it still cost 15-20 % of applying a batch (measured with the collector off); garbage that
    # needs the collector (cycles) is rare, and waits a little longer.
    worker_gc_gen0_threshold: int = Field(500_000, ge=700, validation_alias=AliasChoices("CX_WORKER_GC_GEN0_THRESHOLD"))
    publish_interval_seconds: float = 0.5
    publish_batch_size: int = 500
    publish_max_per_run: int = 2000  # profiles claimed per run (each batch of them one transaction)

    # Preferences: a purchased unit counts this much more than a view.
    purchase_weight: Decimal = Decimal("3")
    view_weight: Decimal = Decimal("1")
    top_categories: int = 5

    # Recommendations: item-to-item co-occurrence, rebuilt on a schedule.
    recommendation_view_weight: float = 0.25
    recommendation_neighbours: int = 50  # similar items kept per item
    recommendation_limit: int = 10
    recommendation_max_limit: int = 50
    recommendation_rebuild_seconds: float = 300.0

    list_default_limit: int = 50
    list_max_limit: int = 500
