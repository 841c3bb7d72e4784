"""feedback: feedback entries, complaints, segment memberships, surveys

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "feedback_entries",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("score", sa.SmallInteger),
        sa.Column("text", sa.Text),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("order_id", sa.String(128)),
        sa.Column("sku", sa.String(128)),
        sa.Column("category", sa.String(64)),
        sa.Column("survey_id", sa.Uuid),
        sa.Column("question_id", sa.String(64)),
        sa.Column("segment_keys", ARRAY(sa.String(128)), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("sentiment_score", sa.Float),
        sa.Column("sentiment_label", sa.String(16)),
        sa.Column("language", sa.String(8)),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("erased_at", _TS),
        sa.UniqueConstraint("customer_id", "event_id", name="feedback_entries_customer_event"),
    )
    op.create_index("ix_feedback_entries_kind_occurred_at", "feedback_entries", ["kind", "occurred_at"])
    op.create_index("ix_feedback_entries_occurred_at", "feedback_entries", ["occurred_at"])
    op.create_table(
        "complaints",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("feedback_id", sa.Uuid, sa.ForeignKey("feedback_entries.id"), nullable=False, unique=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("assignee", sa.String(128)),
        sa.Column("resolution_note", sa.Text),
        sa.Column("opened_at", _TS, nullable=False),
        sa.Column("first_response_due", _TS, nullable=False),
        sa.Column("resolution_due", _TS, nullable=False),
        sa.Column("acknowledged_at", _TS),
        sa.Column("resolved_at", _TS),
        sa.Column("reopened_at", _TS),
        sa.Column("reopen_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_complaints_customer_id", "complaints", ["customer_id"])
    op.create_index("ix_complaints_status_category", "complaints", ["status", "category"])
    op.create_table(
        "segment_memberships",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("segment_key", sa.String(128), primary_key=True),
        sa.Column("segment_id", sa.String(128), nullable=False),
        sa.Column("is_member", sa.Boolean, nullable=False),
        sa.Column("changed_at", _TS, nullable=False),
    )
    op.create_table(
        "surveys",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("questions", JSONB, nullable=False),
        sa.Column("segment_keys", ARRAY(sa.String(128)), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("starts_at", _TS),
        sa.Column("ends_at", _TS),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "survey_responses",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("survey_id", sa.Uuid, sa.ForeignKey("surveys.id"), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("submitted_at", _TS, nullable=False),
        sa.UniqueConstraint("survey_id", "customer_id", name="survey_responses_one_per_customer"),
    )
    op.create_index("ix_survey_responses_customer_id", "survey_responses", ["customer_id"])
    op.create_table(
        "survey_answers",
        sa.Column("response_id", sa.Uuid, sa.ForeignKey("survey_responses.id"), primary_key=True),
        sa.Column("question_id", sa.String(64), primary_key=True),
        sa.Column("choice", sa.String(200)),
        sa.Column("feedback_id", sa.Uuid, sa.ForeignKey("feedback_entries.id")),
    )


def downgrade() -> None:
    for table in (
        "survey_answers",
        "survey_responses",
        "surveys",
        "segment_memberships",
        "complaints",
        "feedback_entries",
    ):
        op.drop_table(table)
