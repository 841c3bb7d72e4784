from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class ServiceLevel(BaseModel):
    """Targets for a complaint category, in calendar hours from when the complaint was opened."""

    first_response_hours: float = Field(gt=0)
    resolution_hours: float = Field(gt=0)


class FeedbackSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDBACK_", extra="ignore", populate_by_name=True)

    service_name: str = "feedback"
    database_url: str = default_database_url("feedback")
    port: int = 8005

    # Channels a feedback or survey may name (FEEDBACK_CHANNELS='["web","app"]').
    channels: list[str] = ["web", "app", "email", "sms", "store", "call_center", "chat", "social", "survey"]
    max_text_chars: int = 5000
    max_future_skew_seconds: int = 300
    default_complaint_category: str = "general"
    # Service levels per complaint category (FEEDBACK_COMPLAINT_SERVICE_LEVELS='{"delivery": {...}}').
    complaint_service_levels: dict[str, ServiceLevel] = {
        "delivery": ServiceLevel(first_response_hours=4, resolution_hours=48),
        "billing": ServiceLevel(first_response_hours=4, resolution_hours=72),
        "product_quality": ServiceLevel(first_response_hours=8, resolution_hours=120),
    }
    default_service_level: ServiceLevel = ServiceLevel(first_response_hours=24, resolution_hours=120)

    # Sentiment labels: score >= positive threshold is positive, <= minus it negative (docs/feedback.md).
    sentiment_threshold_en: float = Field(0.05, gt=0, lt=1)
    sentiment_threshold_zh: float = Field(0.2, gt=0, lt=1)

    page_size_default: int = 50
    page_size_max: int = 500
    report_default_days: int = 90
    report_max_rows: int = 10_000
    survey_max_questions: int = 50
