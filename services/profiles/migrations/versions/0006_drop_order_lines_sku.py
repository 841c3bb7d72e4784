"""profiles: drop order_lines_sku (no query reads order lines by sku; each purchase line wrote it)

Order lines are read by customer (the primary key's prefix): the portrait export and erasure.

Revision ID: 0006
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("order_lines_sku", table_name="order_lines")


def downgrade() -> None:
    op.create_index("order_lines_sku", "order_lines", ["sku"])
