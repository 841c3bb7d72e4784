"""A service run as `make up` runs it: two API-only processes sharing a port, plus a separate worker."""

from __future__ import annotations

import signal

import httpx

from shared.devstack import free_port
from shared.testing import TestPlatform, eventually, service_process, worker_process
from tests.support import purchase


async def _consumers_ready(client: httpx.AsyncClient) -> bool:
    answer = await client.get("/readyz")
    return bool(answer.json()["checks"]["consumers"]) and answer.status_code == 200


async def test_api_only_process_reports_its_workers_consumer_and_serves_what_it_applied(
    platform: TestPlatform, api_headers: dict[str, str]
) -> None:
    port = free_port()
    api_env = {"CX_API_ONLY": "true", "LOYALTY_API_PROCESSES": "2"}
    with (
        service_process("ingest") as ingest_url,
        service_process("loyalty", env=api_env, probe="/healthz", port=port) as loyalty_url,
        service_process("loyalty", env=api_env, probe="/healthz", port=port),
    ):
        async with httpx.AsyncClient(base_url=loyalty_url, timeout=10) as loyalty:
            # No worker yet: the API answers, but is not ready, since nothing consumes for it.
            first = await loyalty.get("/readyz")
            assert first.status_code == 503 and first.json()["checks"]["consumers"] is False

            with worker_process("loyalty") as worker:
                assert await eventually(lambda: _consumers_ready(loyalty), timeout=120, interval=0.5)
                body = purchase(total="21.00")
                async with httpx.AsyncClient(base_url=ingest_url, timeout=10) as ingest:
                    answer = await ingest.post("/v1/purchases", json=body, headers=api_headers)
                assert answer.status_code == 202, answer.text

                async def points() -> int | None:
                    member = await loyalty.get(f"/v1/members/{body['customer_id']}", headers=api_headers)
                    return int(member.json()["points"]) if member.status_code == 200 else None

                assert await eventually(points, timeout=120, interval=0.2) == 21
                # Both API processes answer on the one port (new connections are spread over them).
                answers = []
                for _ in range(20):
                    async with httpx.AsyncClient(base_url=loyalty_url, timeout=10) as fresh:
                        member = await fresh.get(f"/v1/members/{body['customer_id']}", headers=api_headers)
                        answers.append((member.status_code, member.json()["points"]))
                assert set(answers) == {(200, 21)}

                # The worker dies without a goodbye: its database session ends, and so does readiness.
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)

                async def not_ready() -> bool:
                    answer = await loyalty.get("/readyz")
                    return answer.status_code == 503 and answer.json()["checks"]["consumers"] is False

                assert await eventually(not_ready, timeout=30, interval=0.5)
