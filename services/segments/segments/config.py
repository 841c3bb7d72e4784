from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class SegmentsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SEGMENTS_", extra="ignore", populate_by_name=True)

    service_name: str = "segments"
    database_url: str = default_database_url("segments")
    port: int = 8003
