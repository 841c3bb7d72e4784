"""A small, fast HTTP/1.1 load generator (keep-alive connections over asyncio streams).

httpx costs ~0.3 ms of CPU per request, which on a 2-core machine would measure the client,
not the server; this client does the minimum: write a request, read one content-length answer.
Traffic goes to loopback only, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Request = tuple[str, str, bytes]  # method, path, body


@dataclass
class LoadResult:
    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latencies_ms, p)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


class Connection:
    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader and self.writer
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n".encode()
        self.writer.write(head + self.fixed_headers + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            return status, await self._read_chunked()
        return status, await self.reader.readexactly(length) if length else b""

    async def _read_chunked(self) -> bytes:
        assert self.reader
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readline()).strip() or b"0", 16)
            if size == 0:
                await self.reader.readline()
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readline()


async def run_load(
    url: str,
    make_request: Callable[[int], Request],
    *,
    total: int,
    connections: int = 32,
    headers: dict[str, str] | None = None,
    max_seconds: float = 60.0,
    rate_per_second: float | None = None,
) -> LoadResult:
    """Send `total` requests over `connections` keep-alive connections.

    Closed loop (as fast as answers come) unless `rate_per_second` is given: then requests are
    started on a fixed schedule (open loop), so slow answers show up as latency, not lower rate.
    """
    host, port = url.removeprefix("http://").split(":")
    all_headers = {"Content-Type": "application/json"} | (headers or {})
    result = LoadResult()
    counter = iter(range(total))
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        conn = Connection(host, int(port), all_headers)
        await conn.open()
        try:
            for index in counter:
                if rate_per_second:
                    delay = started + index / rate_per_second - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if time.perf_counter() > deadline:
                    return
                method, path, body = make_request(index)
                sent = time.perf_counter()
                try:
                    status, _ = await conn.request(method, path, body)
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    status = 599
                    await conn.close()
                    await conn.open()
                result.latencies_ms.append((time.perf_counter() - sent) * 1000)
                result.statuses[status] += 1
                result.requests += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result
