from __future__ import annotations

from datetime import timedelta
from functools import cached_property

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url

INTERACTION_TYPES = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "search",
    "wishlist_add",
    "app_open",
    "email_open",
    "email_click",
    "social_mention",
    "support_contact",
)


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", populate_by_name=True)

    service_name: str = "ingest"
    database_url: str = default_database_url("ingest")
    port: int = 8001
    max_future_skew_seconds: int = 300
    batch_max_events: int = 1000
    # Interaction properties and custom identify traits: bounded so one event stays a small message.
    max_properties_bytes: int = 16_384
    max_properties_keys: int = 100
    interaction_types: list[str] = list(INTERACTION_TYPES)
    # Bulk import: rows sent to PostgreSQL per COPY, and how many rejected rows the answer lists.
    import_copy_rows: int = 20_000
    import_max_reported_errors: int = 1000
    # PostgreSQL work_mem for the import's grouping (per import transaction; sorts spill to disk beyond).
    import_work_mem_mb: int = 256
    # Python's default (700) collects the young generation every few events on the batch path.
    gc_gen0_threshold: int = 50_000

    # Built once per settings object: the validation limits of every request use them.
    @cached_property
    def max_future_skew(self) -> timedelta:
        return timedelta(seconds=self.max_future_skew_seconds)

    @cached_property
    def interaction_type_set(self) -> frozenset[str]:
        return frozenset(self.interaction_types)
