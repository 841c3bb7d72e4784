"""profiles: find a customer's outbox rows by key (erasure deletes them)

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("outbox_key", "outbox", ["key"])


def downgrade() -> None:
    op.drop_index("outbox_key", table_name="outbox")
