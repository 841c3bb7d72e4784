"""Scheduled work inside a service: a job runs every N seconds, each run in its own transaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from shared.runtime import Job, ServiceRuntime

log = logging.getLogger(__name__)


def every(seconds: float | Callable[[ServiceRuntime], float], work: Callable[[AsyncSession], Awaitable[object]]) -> Job:
    """A runtime job calling `work(session)` periodically; the job commits, `work` never does.

    `seconds` may read the interval from the runtime's settings. A failing run is logged and the
    next one happens on schedule: scheduled work must be safe to repeat.
    """

    async def job(runtime: ServiceRuntime) -> None:
        interval = seconds(runtime) if callable(seconds) else seconds
        while True:
            await asyncio.sleep(interval)
            try:
                async with runtime.sessionmaker() as session, session.begin():
                    await work(session)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled job failed", extra={"job": getattr(work, "__name__", "job")})

    job.__name__ = getattr(work, "__name__", "job")
    return job
