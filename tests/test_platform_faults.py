"""The whole platform as `make up` runs it (every service as API + worker), with the broker restarted empty.

The embedded broker keeps messages in memory: a restart loses every topic, message and offset.
Each service notices, recreates the topics and publishes its retained outbox again; idempotent
consumers absorb the repeats. Checked: no event lost, none applied twice, no partition stalled.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from shared.devstack import free_port
from shared.outbox import asyncpg_dsn
from shared.settings import SERVICES
from shared.testing import TEST_API_KEY, TEST_JWT_SECRET, TestPlatform, eventually, read_topic
from shared.topics import PURCHASES
from tests.support import ledger_counts, purchase

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def full_platform(platform: TestPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """deploy/up.py's Platform on the session's databases, with a broker of its own to restart."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    monkeypatch.setenv("CX_BROKER_CHECK_SECONDS", "0.5")
    for service in SERVICES:
        monkeypatch.setenv(f"{service.upper()}_PORT", str(free_port()))
    monkeypatch.syspath_prepend(str(ROOT / "deploy"))
    import up

    monkeypatch.setattr(up, "DATA", tmp_path)
    monkeypatch.setattr(up, "BROKER_PORT", free_port())
    (tmp_path / "logs").mkdir()
    _forget_earlier_tests_messages(platform)
    system = up.Platform()
    try:
        urls, bootstrap = system.start_infrastructure()
        system.start_services(urls, bootstrap, TEST_API_KEY, TEST_JWT_SECRET)
        system.wait_until_ready(timeout=180)
        yield system
    finally:
        system.stop()
        sys.modules.pop("up", None)


def _forget_earlier_tests_messages(platform: TestPlatform) -> None:
    """The new broker gets every retained outbox row republished: only this test's, not the suite's."""

    async def forget() -> None:  # own connections: the session's engines belong to another event loop
        for service in SERVICES:
            connection = await asyncpg.connect(asyncpg_dsn(platform.database_urls[service]))
            try:
                await connection.execute("delete from outbox where state = 'published'")
            finally:
                await connection.close()

    asyncio.run(forget())


async def _profiles(platform: TestPlatform, customers: list[str]) -> dict[str, tuple[int, Decimal]] | None:
    async with platform.engine("profiles").connect() as conn:
        rows = await conn.execute(
            text("select customer_id, orders, net_revenue from customers where customer_id = any(:ids)"),
            {"ids": customers},
        )
        found = {row[0]: (int(row[1]), Decimal(row[2])) for row in rows}
    return found if len(found) == len(customers) and all(o >= 1 for o, _ in found.values()) else None


async def _credited(platform: TestPlatform, customers: list[str]) -> dict[str, tuple[int, int]] | None:
    counts = await ledger_counts(platform.engine("loyalty"), customers)
    return counts if len(counts) == len(customers) else None


async def _why_not_credited(platform: TestPlatform, system: Any, customers: list[str]) -> str:
    """What a failed run needs to be understood: where each uncredited purchase got to."""
    counts = await ledger_counts(platform.engine("loyalty"), customers)
    missing = [c for c in customers if c not in counts]
    lines = [f"not credited: {len(missing)} of {len(customers)}"]
    async with platform.engine("ingest").connect() as conn:
        rows = (
            await conn.execute(
                text("select key, event_id, state, attempts from outbox where topic = :t and key = any(:k)"),
                {"t": PURCHASES, "k": missing},
            )
        ).all()
    outbox_rows = {row[0]: row for row in rows}
    async with platform.engine("loyalty").connect() as conn:
        processed = set(
            (
                await conn.execute(
                    text("select event_id from processed_messages where event_id = any(:ids)"),
                    {"ids": [row[1] for row in rows]},
                )
            ).scalars()
        )
    bootstrap = system.broker.bootstrap
    records = await read_topic(bootstrap, PURCHASES, expect=10**9, timeout=5)  # all of it
    in_log = {record.key.decode(): (record.partition, record.offset) for record in records}
    ends: dict[int, int] = {}  # per partition found: one past the last offset read
    for record in records:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="loyalty", enable_auto_commit=False)
    await group.start()  # not subscribed, so it never joins: it only reads the group's committed offsets
    try:
        committed = [(p, await group.committed(TopicPartition(PURCHASES, p))) for p in sorted(ends)]
    finally:
        await group.stop()
    lines.append(f"log ends: {sorted(ends.items())}")
    lines.append(f"loyalty committed: {committed}")
    for customer in missing[:20]:
        row = outbox_rows.get(customer)
        lines.append(
            f"{customer}: outbox {row[2:] if row else None}, in new log at {in_log.get(customer)},"
            f" processed {bool(row and row[1] in processed)}"
        )
    return "\n".join(lines)


@pytest.mark.timeout(900)  # start-up, two waits of up to 240 s, and the diagnosis of a failure
async def test_broker_restarted_under_the_whole_platform_loses_nothing(
    platform: TestPlatform, full_platform: Any, api_headers: dict[str, str]
) -> None:
    ingest = next(s for s in full_platform.services if s.name == "ingest" and s.module == "main")
    bodies = [purchase(total="3.00") for _ in range(200)]
    customers = [str(b["customer_id"]) for b in bodies]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest.port}", timeout=30) as api:
        for body in bodies[:100]:
            assert (await api.post("/v1/purchases", json=body, headers=api_headers)).status_code == 202
        await eventually(lambda: _credited(platform, customers[:10]), timeout=180, interval=0.5)
        full_platform.broker.restart()  # every topic, message and offset is gone
        for body in bodies[100:]:
            assert (await api.post("/v1/purchases", json=body, headers=api_headers)).status_code == 202
    try:
        counts = await eventually(lambda: _credited(platform, customers), timeout=240, interval=1.0)
    except AssertionError:
        print(await _why_not_credited(platform, full_platform, customers))
        raise
    profiles = await eventually(lambda: _profiles(platform, customers), timeout=240, interval=1.0)
    lost = len(customers) - len(counts)
    applied_twice = sum(1 for entries, _ in counts.values() if entries > 1)
    counted_twice = sum(1 for orders, _ in profiles.values() if orders > 1)
    assert (lost, applied_twice, counted_twice) == (0, 0, 0)
    assert set(counts.values()) == {(1, 3)}
    assert set(profiles.values()) == {(1, Decimal("3.00"))}
