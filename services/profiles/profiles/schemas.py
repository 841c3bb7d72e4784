"""Response models of the profiles API (money is a decimal string in the profile's currency)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Stage = Literal["prospect", "new", "active", "repeat", "loyal", "at_risk", "churned"]


class Satisfaction(BaseModel):
    nps_last: int | None = Field(description="score of the customer's latest NPS answer (0-10)")
    csat_avg: float | None = Field(description="average CSAT (1-5)")
    rating_avg: float | None = Field(description="average product/order rating (1-5)")
    sentiment_avg: float | None = Field(description="average sentiment score of their feedback")
    complaints: int
    feedback_count: int


class CategoryPreference(BaseModel):
    category: str
    purchased: int = Field(description="units bought in this category")
    views: int = Field(description="browsing interactions naming this category")
    score: float = Field(description="purchased x PROFILES_PURCHASE_WEIGHT + views x PROFILES_VIEW_WEIGHT")


class ProductPreference(BaseModel):
    sku: str
    purchased: int
    views: int
    score: float


class ChannelPreferences(BaseModel):
    orders: dict[str, int] = Field(description="orders per sales channel")
    interactions: dict[str, int] = Field(description="interactions per channel")


class CustomerProfile(BaseModel):
    customer_id: str
    version: int = Field(description="version of the last profile.updated published")
    lifecycle_stage: Stage
    orders: int
    net_revenue: str | None = Field(description="gross minus refunds, in `currency`")
    currency: str | None = Field(description="the currency of most of the customer's orders")
    average_order_value: str | None
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    average_days_between_orders: float | None
    refunds: int
    gross_revenue: str | None
    refunded_amount: str | None
    top_categories: list[str]
    preferred_channels: list[str]
    interaction_counts: dict[str, int]
    last_seen_at: datetime | None
    loyalty_tier: str | None
    loyalty_points: int | None
    satisfaction: Satisfaction
    traits: dict[str, Any] = Field(description="every trait from identify events, personal ones included")
    segments: list[str]
    category_preferences: list[CategoryPreference]
    product_preferences: list[ProductPreference]
    channel_preferences: ChannelPreferences
    updated_at: datetime


class CustomerSummary(BaseModel):
    customer_id: str
    lifecycle_stage: Stage
    orders: int
    net_revenue: str | None
    currency: str | None
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    last_seen_at: datetime | None
    loyalty_tier: str | None
    city: str | None
    top_categories: list[str]


class CustomerPage(BaseModel):
    items: list[CustomerSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class RecommendedProduct(BaseModel):
    sku: str
    name: str | None
    category: str | None
    score: float
    reason: str


class Recommendations(BaseModel):
    customer_id: str
    items: list[RecommendedProduct]


class ErasureAccepted(BaseModel):
    request_id: str
    customer_id: str
    status: Literal["pending", "completed"]


class ServiceConfirmation(BaseModel):
    service: str
    confirmed_at: datetime


class ErasureStatus(BaseModel):
    request_id: str
    status: Literal["pending", "completed"]
    requested_at: datetime
    completed_at: datetime | None
    confirmed: list[ServiceConfirmation]
    waiting_for: list[str]
