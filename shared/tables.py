"""Tables every service database has: the outbox, processed messages and API keys.

They live in one MetaData of their own; each service's first migration creates them with
`shared.migrations.create_platform_tables_v1()`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

platform_metadata = MetaData()

# state: 'pending' until the broker acknowledged the message, then 'published'.
outbox = Table(
    "outbox",
    platform_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", String(256), nullable=False),
    Column("topic", String(249), nullable=False),
    Column("key", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
)

# One row per (consumer, event id) applied, written in the handler's transaction.
processed_messages = Table(
    "processed_messages",
    platform_metadata,
    Column("consumer", String(100), primary_key=True),
    Column("event_id", String(256), primary_key=True),
    Column("outcome", String(16), nullable=False, server_default=text("'applied'")),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# API keys are stored as SHA-256 of the key (keys are 256-bit random, so a slow hash adds nothing).
api_keys = Table(
    "api_keys",
    platform_metadata,
    Column("key_id", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("scopes", ARRAY(String(64)), nullable=False),
    Column("rate_limit_per_second", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)
