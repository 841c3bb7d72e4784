"""Schemathesis against every service's own OpenAPI, over real HTTP: no 5xx, answers match the schema."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from shared.auth import issue_customer_token
from shared.settings import SERVICES
from shared.testing import TEST_API_KEY, TEST_JWT_SECRET, TestPlatform, service_process

EXAMPLES = int(os.environ.get("CX_FUZZ_EXAMPLES", "10"))


@pytest.fixture(scope="module", params=SERVICES)
def service_schema(request: pytest.FixtureRequest, platform: TestPlatform) -> Iterator[schemathesis.BaseSchema]:
    with service_process(request.param) as base:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json")


schema = schemathesis.pytest.from_fixture("service_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_schema(case: Case) -> None:  # type: ignore[type-arg]
    token = issue_customer_token("fuzz-customer", TEST_JWT_SECRET) if "/me" in case.path else TEST_API_KEY
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"},
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )
