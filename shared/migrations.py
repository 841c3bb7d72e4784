"""Versioned DDL for the platform tables, called from each service's Alembic history."""

from __future__ import annotations

from alembic import op

OUTBOX_CHANNEL = "outbox"


def create_platform_tables_v1() -> None:
    from shared.tables import api_keys, outbox, processed_messages

    bind = op.get_bind()
    for table in (outbox, processed_messages, api_keys):
        table.create(bind)
    op.create_index("outbox_pending", "outbox", ["id"], postgresql_where="state = 'pending'")
    op.create_index("outbox_published_at", "outbox", ["published_at"], postgresql_where="state = 'published'")
    # Wakes the relay the moment a transaction that wrote outbox rows commits.
    op.execute(
        f"""CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', ''); RETURN NULL; END $$"""
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()"
    )


def drop_platform_tables_v1() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS outbox_notify()")
    for name in ("api_keys", "processed_messages", "outbox"):
        op.drop_table(name)
