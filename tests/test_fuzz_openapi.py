"""Schemathesis against every service's own OpenAPI, over real HTTP: no 5xx, answers match the schema.

Driven with Hypothesis directly (schemathesis' pytest plugin does not support pytest 9 yet).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from shared.auth import issue_customer_token
from shared.migrate import upgrade
from shared.settings import SERVICES
from shared.testing import TEST_API_KEY, TEST_JWT_SECRET, TestPlatform, service_process

EXAMPLES = int(os.environ.get("CX_FUZZ_EXAMPLES", "10"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def authorization(path: str) -> dict[str, str]:
    token = issue_customer_token("fuzz-customer", TEST_JWT_SECRET) if path.startswith("/v1/me") else TEST_API_KEY
    return {"Authorization": f"Bearer {token}"}


def fuzz_operation(operation: Any) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        case.call_and_validate(headers=authorization(case.path), checks=CHECKS)

    run()


def scratch_database(platform: TestPlatform, service: str) -> dict[str, str]:
    """A database of its own, so the random data fuzzing stores (rules, surveys…) touches no other test."""
    if platform.postgres is None:
        return {}
    name = f"fuzz_{service}"
    platform.postgres.ensure_databases([name])
    upgrade(service, platform.postgres.url(name))
    return {f"{service.upper()}_DATABASE_URL": platform.postgres.url(name)}


@pytest.mark.parametrize("service", SERVICES)
def test_no_server_errors_and_answers_match_schema(platform: TestPlatform, service: str) -> None:
    failures: list[str] = []
    with service_process(service, env=scratch_database(platform, service)) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                failures.append(f"operation not testable: {result.err()}")
                continue
            operation = result.ok()
            try:
                fuzz_operation(operation)
            except Exception as error:  # collect every operation's failure, not just the first
                failures.append(f"{operation.method.upper()} {operation.path}: {str(error)[:1500]}")
    assert not failures, "\n\n".join(failures)
