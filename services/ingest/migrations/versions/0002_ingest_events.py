"""ingest: order ids on events (refunds, imports) and key sources (dedup per source)

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ingested_events", sa.Column("order_id", sa.String(128), nullable=True))
    op.create_index(
        "ix_ingested_events_order_id",
        "ingested_events",
        ["order_id"],
        postgresql_where=sa.text("order_id IS NOT NULL"),
    )
    op.create_table(
        "api_key_sources",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_key_sources")
    op.drop_index("ix_ingested_events_order_id", table_name="ingested_events")
    op.drop_column("ingested_events", "order_id")
