"""segments: a current member's row is its entry's history row (one history row less per stay while it lasts)

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE segment_members ADD COLUMN change_id bigint")
    # Each member takes the id of its stay's entry row, which then leaves membership_changes.
    op.execute(
        """UPDATE segment_members m SET change_id = c.id
        FROM (SELECT DISTINCT ON (segment_id, customer_id) id, segment_id, customer_id FROM membership_changes
              WHERE change = 'entered' ORDER BY segment_id, customer_id, id DESC) c
        WHERE c.segment_id = m.segment_id AND c.customer_id = m.customer_id"""
    )
    op.execute("DELETE FROM membership_changes c USING segment_members m WHERE c.id = m.change_id")
    op.execute("UPDATE segment_members SET change_id = nextval('membership_changes_id_seq') WHERE change_id IS NULL")
    op.execute("ALTER TABLE segment_members ALTER COLUMN change_id SET NOT NULL")
    op.create_index("ix_segment_members_segment_change", "segment_members", ["segment_id", "change_id"])


def downgrade() -> None:
    op.execute(
        """INSERT INTO membership_changes (id, segment_id, customer_id, change, reason, occurred_at)
        SELECT change_id, segment_id, customer_id, 'entered', reason, entered_at FROM segment_members"""
    )
    op.drop_index("ix_segment_members_segment_change", table_name="segment_members")
    op.execute("ALTER TABLE segment_members DROP COLUMN change_id")
