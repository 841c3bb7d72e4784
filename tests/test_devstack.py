"""Smoke tests for shared.devstack: real Postgres and a real Tansu broker, started from PyPI packages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from shared.devstack import EmbeddedBroker, EmbeddedPostgres, ensure_topics, free_port

RESERVED_PORTS = {5432, 9092}


def _alive(pid: int) -> bool:
    """Running and not a zombie (an exited daemon may linger as a zombie until init reaps it)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _port() -> int:
    while True:
        port = free_port()
        if port not in RESERVED_PORTS:
            return port


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pgdata", _port(), fsync=False)
    try:
        yield server
    finally:
        server.stop()
    assert not server.is_running()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    server = EmbeddedBroker(_port(), log_path=tmp_path / "tansu.log")
    try:
        yield server
    finally:
        server.stop()
    assert not server.is_running()


async def _fetch(pg: EmbeddedPostgres, database: str, sql: str) -> object:
    conn = await asyncpg.connect(pg.dsn(database))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_free_port() -> None:
    port = free_port()
    assert 1024 < port < 65536


@pytest.mark.asyncio
async def test_postgres_lifecycle(pg: EmbeddedPostgres) -> None:
    # Over the Unix socket: cheaper round trips than loopback TCP.
    assert pg.url("app") == f"postgresql+asyncpg://postgres@/app?host={pg.socket_dir}&port={pg.port}"
    assert not pg.is_running()

    pg.start()
    assert pg.is_running()
    assert (pg.data_dir / "PG_VERSION").exists()

    # Called from inside a running event loop on purpose.
    pg.ensure_databases(["app_one", "app_two"])
    pg.ensure_databases(["app_one", "app_two"])  # idempotent
    for db in ("app_one", "app_two"):
        assert await _fetch(pg, db, "select 1") == 1
    assert await _fetch(pg, "postgres", "show max_connections") == "300"
    assert await _fetch(pg, "postgres", "show fsync") == "off"

    conn = await asyncpg.connect(pg.dsn("app_one"))
    try:
        await conn.execute("create table kept (id int primary key, note text)")
        await conn.execute("insert into kept values (1, 'survives restart')")
    finally:
        await conn.close()

    # A second handle on the same data dir/port reuses the running server.
    pid_before = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    EmbeddedPostgres(pg.data_dir, pg.port, fsync=False).start()
    assert int((pg.data_dir / "postmaster.pid").read_text().split()[0]) == pid_before

    pg.stop()
    assert not pg.is_running()
    assert not _alive(pid_before)

    # Stale postmaster.pid (dead pid) left behind by a crash must not block the next start.
    stale = pg.data_dir / "postmaster.pid"
    stale.write_text(f"999999\n{pg.data_dir}\n0\n{pg.port}\n\n127.0.0.1\n0 0\nready\n")

    pg.start()  # same data dir: no initdb, data kept
    assert pg.is_running()
    assert await _fetch(pg, "app_one", "select note from kept where id = 1") == "survives restart"
    assert await _fetch(pg, "app_two", "select 1") == 1


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.asyncio
async def test_broker_lifecycle(broker: EmbeddedBroker) -> None:
    broker.start()
    assert broker.is_running()
    assert broker.pid is not None
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"

    topics = {"devstack.events": 3, "devstack.other": 1}
    await ensure_topics(broker.bootstrap, topics)
    await ensure_topics(broker.bootstrap, topics)  # already exists -> fine
    assert set(topics) <= await _topics(broker.bootstrap)

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        payload = uuid.uuid4().hex.encode()
        meta = await producer.send_and_wait("devstack.events", payload, key=b"k1")
        assert meta.offset >= 0
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        "devstack.events",
        bootstrap_servers=broker.bootstrap,
        group_id="devstack-test",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=20)
        assert msg.value == payload
        assert msg.key == b"k1"
        await consumer.commit()
    finally:
        await consumer.stop()

    old_pid = broker.pid
    broker.restart()
    assert broker.is_running()
    assert broker.pid != old_pid
    assert old_pid is not None and not _alive(old_pid)

    # Memory storage: everything is gone after a restart.
    assert not (set(topics) & await _topics(broker.bootstrap))
    await ensure_topics(broker.bootstrap, topics)
    assert set(topics) <= await _topics(broker.bootstrap)


def test_broker_start_failure_reports(tmp_path: Path) -> None:
    # Port already taken -> clear error instead of a hang.
    with EmbeddedBroker(_port(), log_path=tmp_path / "a.log") as first:
        second = EmbeddedBroker(first.port)
        with pytest.raises(RuntimeError, match="already in use"):
            second.start()
    assert not first.is_running()
