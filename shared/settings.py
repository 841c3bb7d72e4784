"""Settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_POSTGRES_PORT = 55432
SERVICES = ("ingest", "profiles", "segments", "loyalty", "feedback")
SERVICE_PORTS = {"ingest": 8001, "profiles": 8002, "segments": 8003, "loyalty": 8004, "feedback": 8005}


def default_database_url(service: str) -> str:
    """The database `make up` creates for a service on the embedded PostgreSQL."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{EMBEDDED_POSTGRES_PORT}/{service}"


def _platform(name: str) -> AliasChoices:
    """A platform-wide setting read from one un-prefixed variable (CX_... or KAFKA_...)."""
    return AliasChoices(name)


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set env_prefix ("LOYALTY_") and the defaults."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service_name: str = "service"
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    # Overflow connections are closed on return: size the pool for the expected concurrency,
    # or every burst pays a PostgreSQL backend start per request.
    db_pool_size: int = 30
    db_max_overflow: int = 10
    db_fast_pool_size: int = 20

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias=_platform("KAFKA_BOOTSTRAP_SERVERS"))
    topic_partitions: int = Field(6, validation_alias=_platform("CX_TOPIC_PARTITIONS"))
    # Tansu does not enforce max.message.bytes, so producers check sizes themselves.
    max_message_bytes: int = Field(1_048_576, validation_alias=_platform("CX_MAX_MESSAGE_BYTES"))

    dev_api_key: str | None = Field(None, validation_alias=_platform("CX_DEV_API_KEY"))
    jwt_secret: str | None = Field(None, validation_alias=_platform("CX_JWT_SECRET"))
    jwt_public_key: str | None = Field(None, validation_alias=_platform("CX_JWT_PUBLIC_KEY"))
    jwt_audience: str | None = Field(None, validation_alias=_platform("CX_JWT_AUDIENCE"))
    api_key_cache_seconds: float = Field(30.0, validation_alias=_platform("CX_API_KEY_CACHE_SECONDS"))

    log_level: str = Field("INFO", validation_alias=_platform("CX_LOG_LEVEL"))

    # One service can run as API process(es) plus a worker process (`python -m <service>.worker`):
    # with CX_API_ONLY the HTTP process runs no consumer, relay or jobs, so their bursts never
    # delay a request. <SERVICE>_API_PROCESSES: how many API processes share the port (each is told).
    api_only: bool = Field(False, validation_alias=_platform("CX_API_ONLY"))
    api_processes: int = Field(1, ge=1, le=64)

    relay_enabled: bool = True
    relay_batch_size: int = Field(1000, validation_alias=_platform("CX_RELAY_BATCH_SIZE"))
    relay_poll_seconds: float = Field(0.5, validation_alias=_platform("CX_RELAY_POLL_SECONDS"))
    relay_max_backoff_seconds: float = Field(30.0, validation_alias=_platform("CX_RELAY_MAX_BACKOFF_SECONDS"))
    outbox_retention_hours: float = Field(168.0, validation_alias=_platform("CX_OUTBOX_RETENTION_HOURS"))
    # The embedded broker forgets everything on restart; `make up` turns this on so retained
    # outbox rows are published again (idempotent consumers absorb the repeats).
    # It also makes each service watch for a broker that came back empty (topics gone).
    outbox_republish_on_start: bool = Field(False, validation_alias=_platform("CX_OUTBOX_REPUBLISH_ON_START"))
    broker_check_seconds: float = Field(3.0, validation_alias=_platform("CX_BROKER_CHECK_SECONDS"))

    # A consumed batch allocates ~100,000 short-lived objects: with the default 700 the collector
    # ran hundreds of times per batch, each walking the batch's live objects.
    worker_gc_gen0_threshold: int = Field(200_000, ge=700, validation_alias=_platform("CX_WORKER_GC_GEN0_THRESHOLD"))

    consumers_enabled: bool = True
    consumer_batch_size: int = Field(500, validation_alias=_platform("CX_CONSUMER_BATCH_SIZE"))
    # How long the broker may hold an empty fetch. Tansu does not answer a waiting fetch when data
    # arrives, only when the wait ends (measured produce to consume: 500 ms -> 115 ms, 100 -> 17,
    # 20 -> 6), so the default is short; at 20 the idle polling of five consumers cost ~5-10 % of
    # the API's throughput. Apache Kafka answers at once and can take 500.
    consumer_fetch_max_wait_ms: int = Field(100, ge=1, validation_alias=_platform("CX_CONSUMER_FETCH_MAX_WAIT_MS"))
    # A small batch waits until this long after the previous batch began and takes what arrived
    # meanwhile (shared/consumer.py): fewer, larger transactions at a steady rate. 0: no wait.
    consumer_min_batch_interval_ms: int = Field(
        0, ge=0, validation_alias=_platform("CX_CONSUMER_MIN_BATCH_INTERVAL_MS")
    )
    consumer_max_attempts: int = Field(3, validation_alias=_platform("CX_CONSUMER_MAX_ATTEMPTS"))
    consumer_session_timeout_ms: int = Field(6000, validation_alias=_platform("CX_CONSUMER_SESSION_TIMEOUT_MS"))
    consumer_retry_backoff_seconds: float = Field(0.2, validation_alias=_platform("CX_CONSUMER_RETRY_BACKOFF"))
