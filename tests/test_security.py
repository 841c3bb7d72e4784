"""Security across every service's every operation: credentials, scopes, token tampering.

Operations come from each service's own OpenAPI, so a new endpoint is covered the day it lands.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from shared.auth import generate_api_key, hash_api_key, issue_customer_token
from shared.settings import SERVICES
from shared.tables import api_keys
from shared.testing import TEST_API_KEY, TEST_JWT_SECRET, TestPlatform, running_app

PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def operations(app: FastAPI) -> Iterator[tuple[str, str]]:
    for path, item in app.openapi()["paths"].items():
        if path in PUBLIC:
            continue
        for method in item:
            yield method.upper(), re.sub(r"\{[^}]+\}", "probe-id", path)


def is_customer_route(path: str) -> bool:
    return path == "/v1/me" or path.startswith("/v1/me/")


@pytest.fixture(params=SERVICES)
async def service(
    request: pytest.FixtureRequest, platform: TestPlatform, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, FastAPI, httpx.AsyncClient]]:
    name = request.param
    monkeypatch.setenv(f"{name.upper()}_CONSUMERS_ENABLED", "false")
    monkeypatch.setenv("CX_API_KEY_CACHE_SECONDS", "0")
    app = importlib.import_module(f"{name}.main").create_app()
    async with running_app(app) as client:
        yield name, app, client


async def call(client: httpx.AsyncClient, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: Any = {} if method in {"POST", "PUT", "PATCH"} else None
    return await client.request(method, path, json=body, headers=headers | {"Idempotency-Key": "sec-probe"})


async def test_every_operation_refuses_missing_and_bad_credentials(
    service: tuple[str, FastAPI, httpx.AsyncClient],
) -> None:
    _, app, client = service
    wrong: list[str] = []
    for method, path in operations(app):
        for token in (None, "not-a-key", "cx_abc_" + "x" * 40):
            answer = await call(client, method, path, token)
            if answer.status_code != 401:
                wrong.append(f"{method} {path} with {token!r}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)


async def test_customer_tokens_never_open_staff_routes_nor_keys_customer_routes(
    service: tuple[str, FastAPI, httpx.AsyncClient],
) -> None:
    _, app, client = service
    token = issue_customer_token("sec-customer", TEST_JWT_SECRET)
    wrong = []
    for method, path in operations(app):
        credential = TEST_API_KEY if is_customer_route(path) else token
        answer = await call(client, method, path, credential)
        if answer.status_code != 401:
            wrong.append(f"{method} {path}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)


async def test_key_without_the_needed_scope_is_403_everywhere(
    service: tuple[str, FastAPI, httpx.AsyncClient], platform: TestPlatform
) -> None:
    name, app, client = service
    key_id, key = generate_api_key()
    async with platform.engine(name).begin() as conn:
        await conn.execute(
            api_keys.insert().values(key_id=key_id, key_hash=hash_api_key(key), name="no-scope", scopes=["nothing"])
        )
    wrong = []
    for method, path in operations(app):
        if is_customer_route(path):
            continue
        answer = await call(client, method, path, key)
        if answer.status_code != 403:
            wrong.append(f"{method} {path}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "forge",
    [
        lambda: jwt.encode({"sub": "sec-customer", "exp": int(time.time()) - 5}, TEST_JWT_SECRET, "HS256"),
        lambda: jwt.encode(
            {"sub": "sec-customer", "exp": int(time.time()) + 60}, "another-secret-of-enough-length!", "HS256"
        ),
        lambda: jwt.encode({"sub": "sec-customer", "exp": int(time.time()) + 60}, None, "none"),  # type: ignore[arg-type]
        lambda: issue_customer_token("sec-customer", TEST_JWT_SECRET)[:-3] + "abc",
        lambda: ".".join(issue_customer_token("sec-customer", TEST_JWT_SECRET).split(".")[:2]) + ".",
    ],
    ids=["expired", "wrong-key", "alg-none", "tampered-signature", "stripped-signature"],
)
async def test_forged_customer_tokens_are_refused_on_every_customer_route(
    service: tuple[str, FastAPI, httpx.AsyncClient], forge: Any
) -> None:
    _, app, client = service
    wrong = []
    for method, path in operations(app):
        if is_customer_route(path):
            answer = await call(client, method, path, forge())
            if answer.status_code != 401:
                wrong.append(f"{method} {path}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)
