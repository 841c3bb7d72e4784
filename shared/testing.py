"""Pytest plugin: a real PostgreSQL and a real Kafka-protocol broker for the whole test session.

Starts its own embedded servers on free ports, unless KAFKA_BOOTSTRAP_SERVERS or
<SERVICE>_DATABASE_URL name existing ones. Services under test read the same environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.devstack import EmbeddedBroker, EmbeddedPostgres, free_port
from shared.logs import JsonFormatter
from shared.migrate import upgrade
from shared.settings import SERVICES
from shared.topics import all_topics, create_all

T = TypeVar("T")
TEST_API_KEY = "cx_test_" + secrets.token_urlsafe(24)
TEST_JWT_SECRET = secrets.token_urlsafe(32)


# Independent of shared.logs' redaction patterns on purpose: this checks the redaction worked.
_LEAKS = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z]{2,}"  # e-mail
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ"  # JWT
    r"|\bcx_[A-Za-z0-9]+_[A-Za-z0-9_-]{16,}"  # API key
    r"|\+\d{1,3}[ -]?\(?\d{2,4}\)?[ -]?\d{3}[ -]?\d{3,4}"  # phone number in international form
)
leaked_log_lines: list[str] = []


def scan_for_leaks(lines: Iterable[str], origin: str) -> None:
    leaked_log_lines.extend(f"{origin}: {line[:300]}" for line in lines if _LEAKS.search(line))


class _LeakScanner(logging.Handler):
    """Formats every record exactly as production does and scans the result."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter("test"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            scan_for_leaks([self.format(record)], record.name)


@pytest.fixture(scope="session", autouse=True)
def no_personal_data_in_logs() -> Iterator[None]:
    """Every log line written during the run is scanned; a leak fails the session."""
    scanner = _LeakScanner()
    logging.getLogger().addHandler(scanner)
    yield
    logging.getLogger().removeHandler(scanner)
    if leaked_log_lines:
        pytest.fail("personal data or secrets in logs:\n" + "\n".join(leaked_log_lines[:20]), pytrace=False)


@contextlib.contextmanager
def service_process(
    service: str,
    *,
    env: dict[str, str] | None = None,
    module: str = "main",
    probe: str = "/readyz",
    port: int | None = None,
) -> Iterator[str]:
    """Run `python -m <service>.<module>` as a real process (a free port unless given); URL once `probe` is 200."""
    port = port or free_port()
    full_env = os.environ | {f"{service.upper()}_PORT": str(port)} | (env or {})
    with tempfile.NamedTemporaryFile(prefix=f"{service}-", suffix=".log", delete=False) as log:
        process = subprocess.Popen([sys.executable, "-m", f"{service}.{module}"], env=full_env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        # Generous: several uvicorn workers each import the service on a machine the suite keeps busy.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{service} exited: {Path(log.name).read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}{probe}", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        scan_for_leaks(Path(log.name).read_text(errors="replace").splitlines(), service)
        Path(log.name).unlink(missing_ok=True)


@contextlib.contextmanager
def worker_process(service: str, *, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m <service>.worker` (consumer, relay, jobs; no HTTP); its log is scanned for leaks."""
    with tempfile.NamedTemporaryFile(prefix=f"{service}-worker-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"{service}.worker"], env=os.environ | (env or {}), stdout=log, stderr=log
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        scan_for_leaks(Path(log.name).read_text(errors="replace").splitlines(), f"{service}-worker")
        Path(log.name).unlink(missing_ok=True)


@dataclass
class TestPlatform:
    __test__ = False  # not a test class, despite the name

    bootstrap: str
    database_urls: dict[str, str]
    broker: EmbeddedBroker | None = None
    postgres: EmbeddedPostgres | None = None
    engines: dict[str, AsyncEngine] = field(default_factory=dict)

    def engine(self, service: str) -> AsyncEngine:
        if service not in self.engines:
            self.engines[service] = create_async_engine(self.database_urls[service], pool_size=5)
        return self.engines[service]


@pytest.fixture(scope="session")
def platform() -> Iterator[TestPlatform]:
    with tempfile.TemporaryDirectory(prefix="cx-test-") as tmp:
        postgres = broker = None
        urls = {s: os.environ.get(f"{s.upper()}_DATABASE_URL", "") for s in SERVICES}
        if not all(urls.values()):
            postgres = EmbeddedPostgres(Path(tmp) / "pg", free_port(), fsync=False)
            postgres.start()
            postgres.ensure_databases([s for s in SERVICES if not urls[s]])
            urls = {s: urls[s] or postgres.url(s) for s in SERVICES}
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not bootstrap:
            broker = EmbeddedBroker(free_port(), log_path=Path(tmp) / "broker.log")
            broker.start()
            bootstrap = broker.bootstrap
        env = {f"{s.upper()}_DATABASE_URL": url for s, url in urls.items()}
        env |= {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CX_DEV_API_KEY": TEST_API_KEY,
            "CX_JWT_SECRET": TEST_JWT_SECRET,
            "CX_RELAY_POLL_SECONDS": "0.2",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            for service in SERVICES:
                upgrade(service, urls[service])
            asyncio.run(create_all(bootstrap))
            yield TestPlatform(bootstrap, urls, broker, postgres)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if broker:
                broker.stop()
            if postgres:
                postgres.stop()


@pytest.fixture(scope="session")
def api_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_API_KEY}"}


@contextlib.asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (its workers) and give an HTTP client to it, in this event loop."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@contextlib.asynccontextmanager
async def rollback_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session whose work is rolled back at the end, even what it 'commits' (savepoints)."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = async_sessionmaker(bind=conn, join_transaction_mode="create_savepoint")()
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


async def eventually(check: Callable[[], Awaitable[T | None]], *, timeout: float = 60.0, interval: float = 0.05) -> T:
    """Poll until check() returns a truthy value; fail with the last value after the timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int,
    timeout: float = 15.0,
    matching: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """Read a topic from the beginning (no group) until `expect` (matching) records arrived or the timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(r for r in part if matching is None or matching(r))
    finally:
        await consumer.stop()
    return records


@contextlib.asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


__all__ = [
    "TEST_API_KEY",
    "TEST_JWT_SECRET",
    "TestPlatform",
    "all_topics",
    "eventually",
    "producer",
    "read_topic",
    "rollback_session",
    "running_app",
    "service_process",
    "worker_process",
]
