from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class ProfilesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROFILES_", extra="ignore", populate_by_name=True)

    service_name: str = "profiles"
    database_url: str = default_database_url("profiles")
    port: int = 8002
