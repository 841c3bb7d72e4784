"""What a service's own bench (`python -m <service>.bench`) needs around the service it runs alone:
its processes started and stopped, their CPU and PostgreSQL's, and PostgreSQL's statement report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from shared.devstack import EmbeddedPostgres


def start(module: str, env: dict[str, str], log: Path, profile: str | None = None) -> subprocess.Popen[bytes]:
    """`python -m <module>` with `env` over this environment; with `profile`, under py-spy (raw stacks)."""
    command = [sys.executable, "-m", module]
    if profile:
        py_spy = os.environ.get("PY_SPY", str(Path(sys.executable).parent / "py-spy"))
        command = [py_spy, "record", "-r", "200", "-f", "raw", "-o", profile, "--", *command]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=os.environ | env, stdout=out, stderr=out)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)  # the services stop cleanly on it, and py-spy writes its profile
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of a process and its live children."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def postgres_cpu(postgres: EmbeddedPostgres) -> float:
    """The server's CPU: the postmaster and every backend."""
    pid = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
    return cpu_seconds(psutil.Process(pid))


async def enable_statement_stats(postgres: EmbeddedPostgres, database: str) -> None:
    """pg_stat_statements with planning times, from zero (the server restarts to load it)."""
    conn = await asyncpg.connect(postgres.dsn(database))
    try:
        await conn.execute("alter system set shared_preload_libraries = 'pg_stat_statements'")
        await conn.execute("alter system set pg_stat_statements.track_planning = on")
    finally:
        await conn.close()
    postgres.stop()
    postgres.start()
    conn = await asyncpg.connect(postgres.dsn(database))
    try:
        await conn.execute("create extension if not exists pg_stat_statements")
        await conn.execute("select pg_stat_statements_reset()")
    finally:
        await conn.close()


async def statement_stats(dsn: str, limit: int = 15) -> list[dict[str, Any]]:
    """The statements that took the server longest, with their planning time."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select calls, round(total_exec_time::numeric, 1) as ms,"
            " round(total_plan_time::numeric, 1) as plan_ms, rows,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 110) as query"
            " from pg_stat_statements order by total_exec_time desc limit $1",
            limit,
        )
        return [dict(r) | {"ms": float(r["ms"]), "plan_ms": float(r["plan_ms"])} for r in rows]
    finally:
        await conn.close()
