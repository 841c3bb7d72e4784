"""profiles: platform tables

Revision ID: 0001
"""

from shared.migrations import create_platform_tables_v1, drop_platform_tables_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables_v1()


def downgrade() -> None:
    drop_platform_tables_v1()
