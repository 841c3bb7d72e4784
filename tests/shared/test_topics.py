"""Topics are created by `ensure_topics` alone, with their partition counts, never by a client asking for them."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

from shared.devstack import ensure_topics
from shared.testing import TestPlatform


async def _partitions(bootstrap: str, topic: str) -> set[int]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await reader.start()
    try:
        await reader.topics()  # a fresh look at every topic the broker has
        return reader.partitions_for_topic(topic) or set()
    finally:
        await reader.stop()


async def test_a_producer_sending_to_a_missing_topic_does_not_create_it(platform: TestPlatform) -> None:
    # Auto-creation would give the broker's default (4 on Tansu) instead of the configured count.
    topic = f"test.missing.{uuid.uuid4().hex[:8]}.v1"
    producer = AIOKafkaProducer(bootstrap_servers=platform.bootstrap, request_timeout_ms=2000)
    await producer.start()
    try:
        with pytest.raises((KafkaTimeoutError, UnknownTopicOrPartitionError, TimeoutError)):
            await asyncio.wait_for(producer.send_and_wait(topic, b"x"), timeout=10)
        assert await _partitions(platform.bootstrap, topic) == set()
        await ensure_topics(platform.bootstrap, {topic: 6})
        assert await _partitions(platform.bootstrap, topic) == set(range(6))
        await producer.send_and_wait(topic, b"x", partition=5)
    finally:
        await producer.stop()
