"""segments: order facts, profile snapshots, RFM, models, segments and memberships

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"

BUILTIN_SEGMENTS = [
    ("rfm-champions", "Champions", "rfm", "bought recently, buy often and spend the most"),
    ("rfm-loyal", "Loyal", "rfm", "buy regularly and spend well"),
    ("rfm-potential-loyalist", "Potential Loyalist", "rfm", "recent customers with average spend"),
    ("rfm-new", "New", "rfm", "bought very recently, but little so far"),
    ("rfm-promising", "Promising", "rfm", "recent shoppers who have not spent much yet"),
    ("rfm-need-attention", "Need Attention", "rfm", "average recency, frequency and spend"),
    ("rfm-about-to-sleep", "About to Sleep", "rfm", "below average recency and spend"),
    ("rfm-at-risk", "At Risk", "rfm", "spent well and often, but long ago"),
    ("rfm-cant-lose-them", "Can't Lose Them", "rfm", "were among the best, have not come back for long"),
    ("rfm-hibernating", "Hibernating", "rfm", "last purchase long ago, few orders, low spend"),
    ("rfm-lost", "Lost", "rfm", "lowest recency, frequency and spend"),
    ("churn-risk", "Churn risk", "predictive", "bought before, but the BG/NBD model says they have probably left"),
    ("top-predicted-value", "Top predicted value", "predictive", "the highest predicted 365-day value"),
]


def upgrade() -> None:
    created = sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)
    op.create_table("customers", sa.Column("customer_id", sa.String(128), primary_key=True), created)
    op.create_table(
        "customer_profiles",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("profile", JSONB, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(200), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Numeric(18, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
    )
    op.create_index("ix_orders_customer_id", "orders", ["customer_id", "occurred_at"])
    op.create_table(
        "refunds",
        sa.Column("refund_id", sa.String(200), primary_key=True),
        sa.Column("order_id", sa.String(200), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Numeric(18, 2), nullable=False),
    )
    op.create_index("ix_refunds_customer_id", "refunds", ["customer_id"])
    op.create_table(
        "rfm_cut_points",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("recency", ARRAY(sa.Numeric), nullable=False),
        sa.Column("frequency", ARRAY(sa.Numeric), nullable=False),
        sa.Column("monetary", ARRAY(sa.Numeric), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "rfm_scores",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recency_days", sa.Integer, nullable=False),
        sa.Column("frequency", sa.Integer, nullable=False),
        sa.Column("monetary", sa.Numeric(18, 2), nullable=False),
        sa.Column("r_score", sa.SmallInteger, nullable=False),
        sa.Column("f_score", sa.SmallInteger, nullable=False),
        sa.Column("m_score", sa.SmallInteger, nullable=False),
        sa.Column("rfm_segment", sa.String(32), nullable=False),
    )
    op.create_table(
        "clv_models",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("fitted_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("calibration_end", sa.Date),
        sa.Column("r", sa.Float, nullable=False),
        sa.Column("alpha_days", sa.Float, nullable=False),
        sa.Column("a", sa.Float, nullable=False),
        sa.Column("b", sa.Float, nullable=False),
        sa.Column("p", sa.Float),
        sa.Column("q", sa.Float),
        sa.Column("gamma", sa.Float),
        sa.Column("log_likelihood", sa.Float, nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("top_value_cut", sa.Numeric(18, 2)),
    )
    op.create_table(
        "predictions",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("p_alive", sa.Numeric(8, 6), nullable=False),
        sa.Column("expected_purchases_90d", sa.Numeric(14, 6), nullable=False),
        sa.Column("clv_365d", sa.Numeric(18, 2), nullable=False),
        sa.Column("model_id", sa.BigInteger, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "cluster_models",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("fitted_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("features", ARRAY(sa.Text), nullable=False),
        sa.Column("mean", ARRAY(sa.Float), nullable=False),
        sa.Column("scale", ARRAY(sa.Float), nullable=False),
        sa.Column("centres", JSONB, nullable=False),
        sa.Column("segment_ids", ARRAY(sa.Text), nullable=False),
        sa.Column("silhouette", sa.Float),
    )
    op.create_table(
        "segments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(100), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("rule", JSONB),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "segment_members",
        sa.Column("segment_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_segment_members_customer_id", "segment_members", ["customer_id"])
    op.create_table(
        "membership_changes",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("segment_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("change", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_membership_changes_segment", "membership_changes", ["segment_id", "occurred_at", "id"])
    op.create_index("ix_membership_changes_customer", "membership_changes", ["customer_id", "id"])
    op.create_table(
        "segment_sizes",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("segment_id", sa.String(64), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("entered", sa.Integer, nullable=False),
        sa.Column("exited", sa.Integer, nullable=False),
    )
    op.create_index("ix_segment_sizes_segment", "segment_sizes", ["segment_id", "measured_at"])
    op.create_table(
        "recompute_runs",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("entered", sa.Integer, nullable=False),
        sa.Column("exited", sa.Integer, nullable=False),
        sa.Column("seconds", JSONB, nullable=False),
    )
    # Typed reads of profile JSON for compiled rules; segments.rules.to_typed mirrors each one.
    op.execute(
        """CREATE FUNCTION cx_num(v jsonb) RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE jsonb_typeof(v) WHEN 'number' THEN (v #>> '{}')::numeric
          WHEN 'string' THEN CASE WHEN (v #>> '{}') ~ '^-?[0-9]+(\\.[0-9]+)?$' THEN (v #>> '{}')::numeric END
        END $$"""
    )
    op.execute(
        """CREATE FUNCTION cx_text(v jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' END $$"""
    )
    op.execute(
        """CREATE FUNCTION cx_bool(v jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN jsonb_typeof(v) = 'boolean' THEN (v #>> '{}')::boolean END $$"""
    )
    op.execute(
        f"""CREATE FUNCTION cx_time(v jsonb) RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN jsonb_typeof(v) <> 'string' THEN NULL
          WHEN (v #>> '{{}}') ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$'
            AND pg_input_is_valid((v #>> '{{}}') || 'T00:00:00Z', 'timestamptz')
            THEN ((v #>> '{{}}') || 'T00:00:00Z')::timestamptz
          WHEN (v #>> '{{}}') ~ '{TIME_PATTERN}' AND pg_input_is_valid(v #>> '{{}}', 'timestamptz')
            THEN (v #>> '{{}}')::timestamptz
        END $$"""
    )
    op.execute(
        """CREATE FUNCTION cx_list(v jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN jsonb_typeof(v) = 'array' THEN v END $$"""
    )
    op.execute(
        """CREATE FUNCTION cx_present(v jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN jsonb_typeof(v) <> 'null' THEN v END $$"""
    )
    # What rules read: one row per customer with profile, RFM and predictions.
    op.execute(
        """CREATE VIEW customer_attributes AS
        SELECT c.customer_id, p.profile, r.recency_days, r.frequency, r.monetary, r.r_score, r.f_score,
               r.m_score, r.rfm_segment, pr.p_alive, pr.expected_purchases_90d, pr.clv_365d
        FROM customers c
        LEFT JOIN customer_profiles p ON p.customer_id = c.customer_id
        LEFT JOIN rfm_scores r ON r.customer_id = c.customer_id
        LEFT JOIN predictions pr ON pr.customer_id = c.customer_id"""
    )
    segments = sa.table(
        "segments",
        sa.column("id", sa.String),
        sa.column("key", sa.String),
        sa.column("name", sa.String),
        sa.column("kind", sa.String),
        sa.column("description", sa.Text),
    )
    op.bulk_insert(
        segments,
        [
            {"id": key, "key": key, "name": name, "kind": kind, "description": description}
            for key, name, kind, description in BUILTIN_SEGMENTS
        ],
    )


def downgrade() -> None:
    op.execute("DROP VIEW customer_attributes")
    for function in ("cx_num", "cx_text", "cx_bool", "cx_time", "cx_list", "cx_present"):
        op.execute(f"DROP FUNCTION {function}(jsonb)")
    for table in (
        "recompute_runs",
        "segment_sizes",
        "membership_changes",
        "segment_members",
        "segments",
        "cluster_models",
        "predictions",
        "clv_models",
        "rfm_scores",
        "rfm_cut_points",
        "refunds",
        "orders",
        "customer_profiles",
        "customers",
    ):
        op.drop_table(table)
