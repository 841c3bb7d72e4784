"""The database helpers on the real PostgreSQL."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.db import transaction_connection
from shared.testing import TestPlatform


async def test_statements_on_the_transaction_connection_roll_back_with_the_session(platform: TestPlatform) -> None:
    # Sent straight to asyncpg before SQLAlchemy ran anything, they used to commit one by one.
    engine = platform.engine("feedback")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("create table if not exists db_probe (n int)")
        await conn.exec_driver_sql("truncate db_probe")
    async with async_sessionmaker(engine)() as session:
        connection = await transaction_connection(session)
        assert connection.is_in_transaction()
        await connection.execute("insert into db_probe values (1)")
        await session.rollback()
    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("select count(*) from db_probe")).scalar_one() == 0
