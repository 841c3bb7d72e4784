from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class LoyaltySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore", populate_by_name=True)

    service_name: str = "loyalty"
    database_url: str = default_database_url("loyalty")
    port: int = 8004
