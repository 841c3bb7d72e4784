"""ingest: platform tables and ingested_events

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from shared.migrations import create_platform_tables_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables_v1()
    op.create_table(
        "ingested_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("customer_key", sa.String(128), nullable=False),
        sa.Column("envelope_id", sa.String(64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.UniqueConstraint("source", "event_id", name="ingested_events_source_event_id"),
    )
    op.create_index("ix_ingested_events_customer_key", "ingested_events", ["customer_key"])


def downgrade() -> None:
    op.drop_table("ingested_events")
