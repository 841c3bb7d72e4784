"""profiles: drop customers_city (the city filter compares lower(city), which it cannot serve)

Every customers upsert that is not a HOT update (most: dirty and revenue change) wrote it.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("customers_city", table_name="customers")


def downgrade() -> None:
    op.create_index("customers_city", "customers", ["city"])
