"""loyalty: platform tables, members and ledger_entries

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from shared.migrations import create_platform_tables_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables_v1()
    op.create_table(
        "members",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("points", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tier", sa.String(32), nullable=False, server_default="bronze"),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("points >= 0", name="members_points_not_negative"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(128), sa.ForeignKey("members.customer_id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("cause_type", sa.String(32), nullable=False),
        sa.Column("cause_id", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("customer_id", "kind", "cause_type", "cause_id", name="ledger_entries_one_per_cause"),
    )
    op.create_index("ix_ledger_entries_customer_id", "ledger_entries", ["customer_id"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
    op.drop_table("members")
