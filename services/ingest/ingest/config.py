from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", populate_by_name=True)

    service_name: str = "ingest"
    database_url: str = default_database_url("ingest")
    port: int = 8001
    max_future_skew_seconds: int = 300
