from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class LoyaltySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore", populate_by_name=True)

    service_name: str = "loyalty"
    database_url: str = default_database_url("loyalty")
    port: int = 8004
    # Redemptions wait on their member's row lock while holding a connection: a bigger pool than the default.
    db_pool_size: int = 20
    db_max_overflow: int = 40

    # Earning rules (JSON, docs/loyalty.md) copied into the database at start when it holds none.
    rules_file: str | None = None
    # How long the API keeps earning rules in memory before reading them again.
    rules_cache_seconds: float = 5.0

    # The member answer lists lots expiring within this many days, at most this many dates.
    expiring_window_days: int = 90
    expiring_max_listed: int = 10

    expiry_job_seconds: float = 3600.0
    expiry_batch_size: int = 1000
    tier_review_job_seconds: float = 3600.0
    tier_review_batch_size: int = 1000

    transactions_page_size: int = 50
    transactions_max_page_size: int = 200
    redemption_max_points: int = 10_000_000
    adjustment_max_points: int = 10_000_000
    # Stored redemption answers are replayed for this long, then forgotten by a job.
    idempotency_key_retention_hours: float = 168.0
    idempotency_cleanup_job_seconds: float = 3600.0
