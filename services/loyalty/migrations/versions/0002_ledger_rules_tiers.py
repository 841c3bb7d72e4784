"""loyalty: lots, expiry, tiers, orders and refunds, segment memberships, idempotency keys, earning rules

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def _member_fk() -> sa.ForeignKey:
    return sa.ForeignKey("members.customer_id", onupdate="CASCADE")


def upgrade() -> None:
    op.add_column("members", sa.Column("tier_changed_at", _TZ))
    op.add_column("members", sa.Column("erased_at", _TZ))

    # Erasure rewrites a member's id: ledger rows follow it.
    op.drop_constraint("ledger_entries_customer_id_fkey", "ledger_entries", type_="foreignkey")
    op.create_foreign_key(
        "ledger_entries_customer_id_fkey",
        "ledger_entries",
        "members",
        ["customer_id"],
        ["customer_id"],
        onupdate="CASCADE",
    )
    for column in (
        sa.Column("occurred_at", _TZ),
        sa.Column("balance_after", sa.BigInteger),
        sa.Column("reason", sa.String(500)),
        sa.Column("remaining", sa.BigInteger),
        sa.Column("expires_at", _TZ),
        sa.Column("qualifying", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("qualifying_at", _TZ),
        sa.Column("shortfall", sa.BigInteger, nullable=False, server_default="0"),
    ):
        op.add_column("ledger_entries", column)
    op.alter_column("ledger_entries", "cause_id", type_=sa.String(300), existing_nullable=False)
    # Entries of the first slice were purchase earnings: they become open lots that never expire.
    op.execute("UPDATE ledger_entries SET remaining = points, qualifying = points WHERE kind = 'earn'")
    op.execute("UPDATE ledger_entries SET occurred_at = created_at, qualifying_at = created_at")
    op.create_check_constraint(
        "ledger_lot_bounds", "ledger_entries", "remaining IS NULL OR (remaining >= 0 AND remaining <= points)"
    )
    op.create_index("ix_ledger_entries_customer_page", "ledger_entries", ["customer_id", "id"])
    op.create_index(
        "ix_ledger_open_lots",
        "ledger_entries",
        ["customer_id", "expires_at", "id"],
        postgresql_where=sa.text("remaining > 0"),
    )
    op.create_index("ix_ledger_lots_due", "ledger_entries", ["expires_at"], postgresql_where=sa.text("remaining > 0"))
    op.create_index(
        "ix_ledger_qualifying",
        "ledger_entries",
        ["customer_id", "qualifying_at"],
        postgresql_where=sa.text("qualifying <> 0"),
    )

    op.create_table(
        "orders",
        sa.Column("customer_id", sa.String(128), _member_fk(), primary_key=True),
        sa.Column("order_id", sa.String(200), primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total", sa.Numeric(20, 6), nullable=False),
        sa.Column("occurred_at", _TZ, nullable=False),
        sa.Column("raw_points", sa.Numeric(30, 10), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("unit_points", JSONB, nullable=False),
        sa.Column("refunded_raw_points", sa.Numeric(30, 10), nullable=False, server_default="0"),
        sa.Column("reversed_points", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "refunds",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("refund_id", sa.String(200), primary_key=True),
        sa.Column("order_id", sa.String(200), nullable=False),
        sa.Column("occurred_at", _TZ, nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    op.create_index(
        "ix_refunds_pending", "refunds", ["customer_id", "order_id"], postgresql_where=sa.text("state = 'pending'")
    )
    op.create_table(
        "segment_memberships",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("segment_key", sa.String(200), primary_key=True),
        sa.Column("member", sa.Boolean, nullable=False),
        sa.Column("changed_at", _TZ, nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("response", sa.Text),
        sa.Column("created_at", _TZ, server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_table(
        "earning_rules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", JSONB, nullable=False),
        sa.Column("updated_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("id = 1", name="earning_rules_single_row"),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("starts_at", _TZ, nullable=False),
        sa.Column("ends_at", _TZ, nullable=False),
        sa.Column("multiplier", sa.Numeric(12, 4), nullable=False),
        sa.Column("segment_key", sa.String(200)),
        sa.Column("created_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("ends_at > starts_at", name="campaigns_window"),
        sa.CheckConstraint("multiplier > 0", name="campaigns_multiplier_positive"),
    )
    op.create_table(
        "erased_customers",
        sa.Column("customer_hash", sa.String(64), primary_key=True),
        sa.Column("requested_at", _TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erased_customers")
    for table in ("campaigns", "earning_rules", "idempotency_keys", "segment_memberships", "refunds", "orders"):
        op.drop_table(table)
    op.drop_index("ix_ledger_qualifying", "ledger_entries")
    op.drop_index("ix_ledger_lots_due", "ledger_entries")
    op.drop_index("ix_ledger_open_lots", "ledger_entries")
    op.drop_index("ix_ledger_entries_customer_page", "ledger_entries")
    op.drop_constraint("ledger_lot_bounds", "ledger_entries", type_="check")
    for name in ("shortfall", "qualifying_at", "qualifying", "expires_at", "remaining", "reason", "balance_after"):
        op.drop_column("ledger_entries", name)
    op.drop_column("ledger_entries", "occurred_at")
    op.alter_column("ledger_entries", "cause_id", type_=sa.String(200), existing_nullable=False)
    op.drop_constraint("ledger_entries_customer_id_fkey", "ledger_entries", type_="foreignkey")
    op.create_foreign_key(
        "ledger_entries_customer_id_fkey", "ledger_entries", "members", ["customer_id"], ["customer_id"]
    )
    op.drop_column("members", "erased_at")
    op.drop_column("members", "tier_changed_at")
