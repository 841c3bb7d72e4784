"""Alembic, one history per service: `python -m shared.migrate <service> [--url URL]`.

Each service's migrations/env.py calls `run_env(metadata)`; the history lives in
services/<service>/migrations and only touches that service's database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import SERVICES, default_database_url
from shared.tables import platform_metadata

PROJECT_ROOT = Path(os.environ.get("CX_PROJECT_ROOT", Path(__file__).resolve().parent.parent))


def database_url_for(service: str) -> str:
    return os.environ.get(f"{service.upper()}_DATABASE_URL") or default_database_url(service)


def alembic_config(service: str, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(PROJECT_ROOT / "services" / service / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(service: str, url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(service, url or database_url_for(service)), revision)


def run_env(metadata: MetaData) -> None:
    """Body of every service's env.py: run migrations online over asyncpg."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    targets = [metadata, platform_metadata]

    def run(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=targets, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as connection:
            await connection.run_sync(run)
        await engine.dispose()

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=targets, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Called from inside a running loop (tests, the dev runner) Alembic runs in a worker thread.
    asyncio.run(run_async())


def main() -> None:
    parser = argparse.ArgumentParser(description="Apply a service's database migrations.")
    parser.add_argument("service", choices=[*SERVICES, "all"])
    parser.add_argument("--url", help="database URL (default: <SERVICE>_DATABASE_URL or the embedded one)")
    args = parser.parse_args()
    for service in SERVICES if args.service == "all" else (args.service,):
        upgrade(service, args.url if args.service != "all" else None)
        print(f"{service}: migrations applied")


async def upgrade_async(service: str, url: str | None = None) -> None:
    """Alembic's env runs its own event loop, so from async code it runs in a thread."""
    await asyncio.to_thread(upgrade, service, url)


if __name__ == "__main__":
    main()
