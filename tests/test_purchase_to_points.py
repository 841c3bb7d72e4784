"""The thin slice: a purchase posted to ingest becomes points in loyalty, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import ingest.main
import loyalty.main
from ingest.config import IngestSettings
from loyalty.config import LoyaltySettings
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.envelope import new_event
from shared.testing import TestPlatform, eventually, producer, read_topic, running_app
from shared.topics import PURCHASES
from tests.support import ledger_counts, pending_outbox, purchase


async def test_purchase_earns_points_end_to_end(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    body = purchase(total="39.80")
    async with (
        running_app(ingest.main.create_app()) as ingest_api,
        running_app(loyalty.main.create_app()) as loyalty_api,
    ):
        answer = await ingest_api.post("/v1/purchases", json=body, headers=api_headers)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "accepted"

        async def balance() -> int | None:
            member = await loyalty_api.get(f"/v1/members/{body['customer_id']}", headers=api_headers)
            return member.json()["points"] if member.status_code == 200 else None

        assert await eventually(balance) == 39


async def test_same_purchase_posted_twice_earns_once(platform: TestPlatform, api_headers: dict[str, str]) -> None:
    body = purchase(total="12.50")
    async with running_app(ingest.main.create_app()) as ingest_api, running_app(loyalty.main.create_app()):
        first = await ingest_api.post("/v1/purchases", json=body, headers=api_headers)
        second = await ingest_api.post("/v1/purchases", json=body, headers=api_headers)
        assert (first.status_code, second.status_code) == (202, 200)
        assert second.json()["status"] == "duplicate"
        engine = platform.engine("loyalty")
        assert await eventually(lambda: ledger_counts(engine, [body["customer_id"]])) == {body["customer_id"]: (1, 12)}
        # The same event delivered again on the topic changes nothing either.
        envelope = new_event(type="purchase.completed", source="test", subject=body["customer_id"], data=body)
        async with producer(platform.bootstrap) as kafka:
            for _ in range(3):
                await kafka.send_and_wait(PURCHASES, envelope.encode(), key=body["customer_id"].encode())
        await asyncio.sleep(1.0)
        assert await ledger_counts(engine, [body["customer_id"]]) == {body["customer_id"]: (1, 12)}


async def test_purchases_sent_while_loyalty_is_down_are_credited_once(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    bodies = [purchase(total="10.00") for _ in range(500)]
    async with running_app(ingest.main.create_app()) as ingest_api:
        limit = asyncio.Semaphore(20)

        async def post(body: dict[str, object]) -> int:
            async with limit:
                return (await ingest_api.post("/v1/purchases", json=body, headers=api_headers)).status_code

        assert set(await asyncio.gather(*(post(b) for b in bodies))) == {202}
        await eventually(lambda: _outbox_drained(platform.engine("ingest")))
    customers = [str(b["customer_id"]) for b in bodies]
    async with running_app(loyalty.main.create_app()):
        counts = await eventually(lambda: _all_credited(platform.engine("loyalty"), customers), timeout=60)
    assert set(counts.values()) == {(1, 10)}


async def test_relay_killed_between_commit_and_publish_loses_nothing(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    bodies = [purchase(total="5.00") for _ in range(300)]
    quiet_relay = IngestSettings(relay_enabled=False)
    async with running_app(ingest.main.create_app(quiet_relay)) as ingest_api:
        for body in bodies:
            assert (await ingest_api.post("/v1/purchases", json=body, headers=api_headers)).status_code == 202
    assert await pending_outbox(platform.engine("ingest")) >= 300
    # A relay process publishing one row per transaction is killed with SIGKILL mid-backlog.
    env = os.environ | {"CX_RELAY_BATCH_SIZE": "1"}
    relay = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingest.worker", env=env)
    try:
        await eventually(lambda: _relay_started(platform.engine("ingest"), 300), timeout=120, interval=0.01)
    finally:
        relay.send_signal(signal.SIGKILL)
        await relay.wait()
    assert await pending_outbox(platform.engine("ingest")) > 0, "the relay finished before it was killed"
    async with running_app(ingest.main.create_app()), running_app(loyalty.main.create_app()):
        customers = [str(b["customer_id"]) for b in bodies]
        counts = await eventually(lambda: _all_credited(platform.engine("loyalty"), customers), timeout=60)
    assert set(counts.values()) == {(1, 5)}


async def test_poison_message_is_dead_lettered_and_the_next_is_processed(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    good = purchase(total="7.00")
    bad_data = new_event(type="purchase.completed", source="test", subject="cus-poison", data={"total": "lots"})
    good_event = new_event(type="purchase.completed", source="test", subject=good["customer_id"], data=good)
    async with producer(platform.bootstrap) as kafka:
        await kafka.send_and_wait(PURCHASES, b"\x00not json", key=good["customer_id"].encode())
        await kafka.send_and_wait(PURCHASES, bad_data.encode(), key=good["customer_id"].encode())
        await kafka.send_and_wait(PURCHASES, good_event.encode(), key=good["customer_id"].encode())
    async with running_app(loyalty.main.create_app(LoyaltySettings())):
        engine = platform.engine("loyalty")
        assert await eventually(lambda: ledger_counts(engine, [good["customer_id"]])) == {good["customer_id"]: (1, 7)}
        key = good["customer_id"].encode()
        letters = await read_topic(
            platform.bootstrap, f"{PURCHASES}.dlq", expect=2, matching=lambda record: record.key == key
        )
    reasons = [letter.value.decode() for letter in letters]
    assert any("not a valid event envelope" in r for r in reasons)
    assert any(bad_data.id in r and "ValidationError" in r for r in reasons)


async def _outbox_drained(engine: AsyncEngine) -> bool:
    return await pending_outbox(engine) == 0


async def _relay_started(engine: AsyncEngine, backlog: int) -> bool:
    return await pending_outbox(engine) <= backlog - 20


async def _all_credited(engine: AsyncEngine, customers: list[str]) -> dict[str, tuple[int, int]] | None:
    counts = await ledger_counts(engine, customers)
    return counts if len(counts) == len(customers) else None
