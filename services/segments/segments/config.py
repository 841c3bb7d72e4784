from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, default_database_url


class SegmentsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SEGMENTS_", extra="ignore", populate_by_name=True)

    service_name: str = "segments"
    database_url: str = default_database_url("segments")
    port: int = 8003

    # Full recompute (RFM, predictions, clusters, every segment's membership) on a schedule; 0 turns it off.
    recompute_interval_seconds: float = 6 * 3600.0
    # After a start, a recompute runs this soon if the last one is older than the interval.
    recompute_first_delay_seconds: float = 30.0
    # work_mem of the recompute's transaction (SET LOCAL): its whole-base hash joins and sorts.
    recompute_work_mem: str = Field(default="512MB", pattern=r"^[0-9]+(kB|MB|GB)$")
    # Predictive models.
    clv_horizon_days: int = 365
    expected_purchases_days: int = 90
    annual_discount_rate: float = 0.10
    # Customers the scheduled BG/NBD + Gamma-Gamma fit uses (a random sample above this; all predicted).
    clv_fit_sample: int = 50_000
    churn_risk_p_alive_below: float = 0.3
    top_value_share: float = 0.10
    # Clusters.
    cluster_k: int | None = None  # None: chosen by silhouette in [cluster_k_min, cluster_k_max]
    cluster_k_min: int = 3
    cluster_k_max: int = 8
    cluster_fit_sample: int = 100_000
    cluster_silhouette_sample: int = 2_500
    cluster_seed: int = 7
    cluster_threads: int = 1
    # Rule segments.
    preview_sample_size: int = 20
    max_rule_nodes: int = 200
