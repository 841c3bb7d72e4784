"""Replay a service's outbox: `python -m shared.replay <service> --since 2026-11-20T00:00:00Z [--topic T]`.

Marks retained published rows pending again; the running relay publishes them in their original
order and consumers skip what they already applied. Use after restoring a broker, to feed a new
consumer group from history the outbox still holds, or to re-drive a topic.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import create_async_engine

from shared.migrate import database_url_for
from shared.outbox import PUBLISHED
from shared.settings import SERVICES
from shared.tables import outbox


async def replay(url: str, *, since: datetime, topic: str | None = None) -> int:
    engine = create_async_engine(url)
    try:
        statement = (
            update(outbox)
            .where(outbox.c.state == PUBLISHED)
            .where(outbox.c.created_at >= since)
            .values(state="pending", next_attempt_at=func.now())
        )
        if topic:
            statement = statement.where(outbox.c.topic == topic)
        async with engine.begin() as conn:
            result = await conn.execute(statement.returning(outbox.c.id))
            return len(result.all())
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--since", required=True, type=datetime.fromisoformat, help="ISO time with zone")
    parser.add_argument("--topic", help="only this topic")
    parser.add_argument("--url", help="database URL (default: <SERVICE>_DATABASE_URL or the embedded one)")
    args = parser.parse_args()
    if args.since.tzinfo is None:
        parser.error("--since needs a time zone, e.g. 2026-11-20T00:00:00Z")
    count = asyncio.run(replay(args.url or database_url_for(args.service), since=args.since, topic=args.topic))
    print(f"{args.service}: {count} outbox rows queued for publishing again")


if __name__ == "__main__":
    main()
