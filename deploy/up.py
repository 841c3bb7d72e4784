"""`make up`: real PostgreSQL, a real Kafka-protocol broker and all five services, on this machine.

Uses the embedded servers from PyPI unless KAFKA_BOOTSTRAP_SERVERS / <SERVICE>_DATABASE_URL
point at existing ones. Ctrl-C (or `make down`) stops everything; data stays under ./.data/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shared.auth import issue_customer_token
from shared.devstack import EmbeddedBroker, EmbeddedPostgres
from shared.migrate import upgrade
from shared.settings import EMBEDDED_POSTGRES_PORT, SERVICE_PORTS, SERVICES
from shared.topics import create_all

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CX_DATA_DIR", ROOT / ".data"))
PIDFILE = DATA / "up.pid"
BROKER_PORT = int(os.environ.get("CX_BROKER_PORT", "9092"))
# API processes per service unless <SERVICE>_API_PROCESSES says otherwise: the hot HTTP paths
# (storefront events, mobile balances, profile reads) get one per core.
DEFAULT_API_PROCESSES = {"ingest": 2, "loyalty": 2, "profiles": 2}
# Consumers whose latency is a goal poll the broker more often than CX_CONSUMER_FETCH_MAX_WAIT_MS
# (Tansu answers a waiting fetch only when the wait ends): a profile change reaches segments within
# 20 ms, not 100. <SERVICE>_CONSUMER_FETCH_MAX_WAIT_MS overrides.
DEFAULT_FETCH_WAIT_MS = {"segments": 20}
# The others take a small batch at most every 30 ms (CX_CONSUMER_MIN_BATCH_INTERVAL_MS, shared/consumer.py):
# at a steady 200 purchases/s the platform's CPU fell from 180 to 166-171 % of a core and purchase ->
# points from p50 51 / p99 101 to 44 / 80-84 ms. Not segments, whose profile -> membership latency is a goal.
# <SERVICE>_CONSUMER_MIN_BATCH_INTERVAL_MS overrides.
DEFAULT_MIN_BATCH_INTERVAL_MS = {"ingest": 30, "profiles": 30, "loyalty": 30, "feedback": 30}
# Workers (consumers, relays, jobs) run at a lower CPU priority than the API processes: on a machine
# they share, a request waits for no consumer's batch, and the consumers take the CPU the requests
# leave (they catch up after a burst; under a sustained overload of the APIs they fall behind).
# Measured on 2 cores, GET /v1/me under ingest load: nice 0 1,857-2,225/s; nice 5 3,472-5,127/s
# (4,031 in a later run); nice 10 4,913-5,063/s; nice 15 5,402-5,510/s, p99 17-18 ms; nice 19 6,057/s.
# Latency at 200 purchases/s was no worse at 15-19 than at 5. CX_WORKER_NICE=0 gives them the same priority.
WORKER_NICE = int(os.environ.get("CX_WORKER_NICE", "15"))
# Partitions per topic on the embedded broker unless CX_TOPIC_PARTITIONS says otherwise. Tansu does
# work for every partition of every fetch, idle ones too: five idle consumers cost it 25 % of a core
# at 6 partitions a topic and 5 % at 1, CPU the APIs share. `make up` runs one worker per service, so
# 2 leave room for a second; Apache Kafka (docker-compose) keeps 6.
EMBEDDED_BROKER_PARTITIONS = 2


def _worker_settings(name: str, defaults: dict[str, dict[str, int]]) -> dict[str, str]:
    """CX_<SETTING> for one service's worker: <SERVICE>_<SETTING> if set, else the service's default
    here unless CX_<SETTING> is set for all."""
    chosen = {}
    for setting, per_service in defaults.items():
        if own := os.environ.get(f"{name.upper()}_{setting}"):
            chosen[f"CX_{setting}"] = own
        elif name in per_service and f"CX_{setting}" not in os.environ:
            chosen[f"CX_{setting}"] = str(per_service[name])
    return chosen


def _lower_priority() -> None:
    os.nice(WORKER_NICE)


@dataclass
class ServiceProcess:
    """One process of a service: its HTTP API (`<service>.main`) or its worker (`<service>.worker`)."""

    name: str
    env: dict[str, str]
    log_path: Path
    module: str = "main"
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    @property
    def port(self) -> int:
        return int(self.env.get(f"{self.name.upper()}_PORT", SERVICE_PORTS[self.name]))

    def start(self) -> None:
        self.log = self.log or open(self.log_path, "ab")  # noqa: SIM115 - kept open while the service runs
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"{self.name}.{self.module}"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_lower_priority if self.module == "worker" and WORKER_NICE else None,
        )
        self.started_at = time.monotonic()

    def terminate(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()

    def wait_stopped(self, deadline: float) -> None:
        if self.process:
            try:
                self.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log:
            self.log.close()
            self.log = None


def credentials() -> tuple[str, str]:
    """The dev API key and JWT secret: from the environment, else generated once and kept in .data."""
    path = DATA / "dev-credentials.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    key = os.environ.get("CX_DEV_API_KEY") or stored.get("api_key") or "cx_dev_" + secrets.token_urlsafe(32)
    secret = os.environ.get("CX_JWT_SECRET") or stored.get("jwt_secret") or secrets.token_urlsafe(32)
    path.write_text(json.dumps({"api_key": key, "jwt_secret": secret}))
    path.chmod(0o600)
    return key, secret


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except Exception:
        return False


def say(text: str) -> None:
    print(text, flush=True)


class Platform:
    def __init__(self) -> None:
        self.postgres: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.services: list[ServiceProcess] = []
        self.stopping = False
        self.partitions = 0  # known once the broker is (start_infrastructure)

    def start_infrastructure(self) -> tuple[dict[str, str], str]:
        urls = {s: os.environ.get(f"{s.upper()}_DATABASE_URL", "") for s in SERVICES}
        if not all(urls.values()):
            port = int(os.environ.get("CX_POSTGRES_PORT", EMBEDDED_POSTGRES_PORT))
            say(f"• PostgreSQL (embedded) on 127.0.0.1:{port}, data in {DATA / 'postgres'}")
            self.postgres = EmbeddedPostgres(DATA / "postgres", port)
            self.postgres.start()
            self.postgres.ensure_databases([s for s in SERVICES if not urls[s]])
            urls = {s: urls[s] or self.postgres.url(s) for s in SERVICES}
        else:
            say("• PostgreSQL: using the <SERVICE>_DATABASE_URL databases")
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not bootstrap:
            say(f"• Kafka-protocol broker (embedded Tansu, in memory) on 127.0.0.1:{BROKER_PORT}")
            self.broker = EmbeddedBroker(BROKER_PORT, log_path=DATA / "logs" / "broker.log")
            self.broker.start()
            bootstrap = self.broker.bootstrap
        else:
            say(f"• Kafka: using {bootstrap}")
        default = EMBEDDED_BROKER_PARTITIONS if self.broker is not None else 6
        self.partitions = int(os.environ.get("CX_TOPIC_PARTITIONS", default))
        asyncio.run(create_all(bootstrap, self.partitions))
        say(f"• topics created ({self.partitions} partitions each)")
        for service in SERVICES:
            upgrade(service, urls[service])
        say("• migrations applied (one Alembic history per service)")
        return urls, bootstrap

    def start_services(self, urls: dict[str, str], bootstrap: str, api_key: str, jwt_secret: str) -> None:
        base = os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CX_DEV_API_KEY": api_key,
            "CX_JWT_SECRET": jwt_secret,
            "PYTHONUNBUFFERED": "1",
            "CX_TOPIC_PARTITIONS": str(self.partitions),  # the counts a service recreates after a broker reset
        }
        if self.broker is not None:
            # The embedded broker forgot everything: publish the retained outbox again.
            base["CX_OUTBOX_REPUBLISH_ON_START"] = "true"
        for name in SERVICES:
            env = base | {f"{name.upper()}_DATABASE_URL": urls[name]}
            count = int(os.environ.get(f"{name.upper()}_API_PROCESSES", DEFAULT_API_PROCESSES.get(name, 1)))
            # The API processes share the port and answer requests only; the worker consumes, relays
            # the outbox and runs the jobs, so a consumer's burst of work never sits before a request.
            api_env = env | {"CX_API_ONLY": "true", f"{name.upper()}_API_PROCESSES": str(count)}
            worker_env = {k: v for k, v in env.items() if k != "CX_API_ONLY"}
            worker_env |= _worker_settings(name, {
                "CONSUMER_FETCH_MAX_WAIT_MS": DEFAULT_FETCH_WAIT_MS,
                "CONSUMER_MIN_BATCH_INTERVAL_MS": DEFAULT_MIN_BATCH_INTERVAL_MS,
            })  # fmt: skip
            processes = [ServiceProcess(name, api_env, DATA / "logs" / f"{name}.log") for _ in range(count)]
            processes.append(ServiceProcess(name, worker_env, DATA / "logs" / f"{name}-worker.log", module="worker"))
            for process in processes:
                process.start()
                self.services.append(process)

    def wait_until_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        # An API's /readyz also reports its worker's consumer (a lock the worker holds in the database).
        apis = list({s.name: s for s in self.services if s.module == "main"}.values())
        pending = {s.name for s in apis}
        while pending and time.monotonic() < deadline:
            for service in apis:
                if service.name in pending and ready(service.port):
                    pending.discard(service.name)
                    say(f"  ✓ {service.name:<9} http://127.0.0.1:{service.port}  ready")
            time.sleep(0.2)
        for name in sorted(pending):
            say(f"  ✗ {name:<9} not ready after {timeout:.0f}s — see {DATA / 'logs' / name}.log")

    def supervise(self) -> None:
        """Restart a service that exits on its own, with a growing pause."""
        while not self.stopping:
            for service in self.services:
                if service.process and service.process.poll() is not None and not self.stopping:
                    service.restarts += 1
                    pause = min(30, 2**service.restarts)
                    what = f"{service.name} {'worker' if service.module == 'worker' else 'API'}"
                    say(f"  ! {what} exited ({service.process.returncode}); restarting in {pause}s")
                    time.sleep(pause)
                    service.start()
            time.sleep(0.5)

    def stop(self) -> None:
        self.stopping = True
        say("\nstopping services…")
        # All at once: each takes a few seconds to leave its consumer group and drain its requests.
        for service in self.services:
            service.terminate()
        deadline = time.monotonic() + 20
        for service in self.services:
            service.wait_stopped(deadline)
        if self.broker:
            self.broker.stop()
        if self.postgres:
            self.postgres.stop()
        PIDFILE.unlink(missing_ok=True)
        say("stopped.")


def print_banner(api_key: str, jwt_secret: str, ports: dict[str, int]) -> None:
    token = issue_customer_token("customer-1", jwt_secret, ttl_seconds=30 * 86_400)
    urls = "\n".join(f"  {name:<9} http://127.0.0.1:{port}/docs" for name, port in ports.items())
    say(
        f"""
Customer platform is up.
{urls}

Development API key (every scope):   {api_key}
Sample customer token (sub=customer-1, 30 days):
  {token}

Try:
  curl -s -X POST http://127.0.0.1:{ports["ingest"]}/v1/purchases -H "Authorization: Bearer {api_key}" \\
    -H 'Content-Type: application/json' -d '{{"event_id":"e-1","order_id":"o-1","customer_id":"customer-1",
    "occurred_at":"{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}","currency":"USD",
    "items":[{{"sku":"MUG","quantity":2,"unit_price":"19.90"}}],"total":"39.80"}}'
  curl -s http://127.0.0.1:{ports["loyalty"]}/v1/me -H "Authorization: Bearer {token[:16]}…"

Logs: {DATA / "logs"}/<service>.log (API) and <service>-worker.log     Stop: Ctrl-C or `make down`
"""
    )


def down() -> None:
    if not PIDFILE.exists():
        say("nothing is running (no .data/up.pid)")
        return
    pid = int(PIDFILE.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        PIDFILE.unlink(missing_ok=True)
        say("the platform was not running")
        return
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            say("stopped.")
            return
        time.sleep(0.1)
    say(f"process {pid} is still stopping")


def up() -> None:
    (DATA / "logs").mkdir(parents=True, exist_ok=True)
    if PIDFILE.exists():
        try:
            os.kill(int(PIDFILE.read_text()), 0)
            sys.exit("the platform is already running (make down to stop it)")
        except (ProcessLookupError, ValueError):
            PIDFILE.unlink()
    PIDFILE.write_text(str(os.getpid()))
    platform = Platform()

    def on_signal(signum: int, _: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        urls, bootstrap = platform.start_infrastructure()
        api_key, jwt_secret = credentials()
        platform.start_services(urls, bootstrap, api_key, jwt_secret)
        platform.wait_until_ready()
        print_banner(api_key, jwt_secret, {s.name: s.port for s in platform.services if s.module == "main"})
        platform.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        platform.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--down", action="store_true", help="stop a running `make up`")
    if parser.parse_args().down:
        down()
    else:
        up()


if __name__ == "__main__":
    main()
