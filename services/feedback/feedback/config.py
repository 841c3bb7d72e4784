from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class FeedbackSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDBACK_", extra="ignore", populate_by_name=True)

    service_name: str = "feedback"
    database_url: str = default_database_url("feedback")
    port: int = 8005
