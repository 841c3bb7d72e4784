"""The FastAPI application every service builds: lifespan, health, errors named by field, body limit."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import configure_logging
from shared.runtime import ServiceRuntime, settle_heap
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

# FastAPI's built-in OpenTelemetry looks up a tracer provider on every request (~3 % of a GET's CPU);
# nothing here exports traces or metrics.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

health = APIRouter(tags=["health"])


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    runtime: ServiceRuntime = request.app.state.runtime
    checks = await runtime.readiness()
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503)


def field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as {"field": "items.0.unit_price", "message": ...}, the body prefix dropped."""
    named = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        named.append(
            {
                "field": ".".join(location) or "body",
                "message": error.get("msg", ""),
                "type": error.get("type"),
            }
        )
    return named


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": "invalid request", "errors": field_errors(exc.errors())}, status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _is_bad_value(error: BaseException) -> bool:
    """A value PostgreSQL or asyncpg refused (SQLSTATE class 22, or asyncpg's client-side DataError)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sa_exc.DataError | asyncpg.exceptions.DataError):
            return True
        if str(getattr(seen, "sqlstate", "") or "").startswith("22"):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, sa_exc.DBAPIError)
    if _is_bad_value(exc):
        # Input validation let through a value PostgreSQL cannot store (NUL byte, out-of-range number):
        # still the caller's input, so a 422, never a 500.
        log.warning("value refused by the database", extra={"path": request.url.path, "error": str(exc.orig)[:300]})
        return await _asyncpg_bad_value(request, exc)
    if not (exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)):
        return await _unexpected_error(request, exc)
    log.warning("database unavailable", extra={"path": request.url.path})
    return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503, headers={"Retry-After": "1"})


# Hot routes use asyncpg directly (PgDep): its connection errors answer 503 like SQLAlchemy's.
_ASYNCPG_UNAVAILABLE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionRefusedError,
)


async def _asyncpg_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
    return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503, headers={"Retry-After": "1"})


async def _asyncpg_bad_value(request: Request, exc: Exception) -> JSONResponse:
    """The same 422 for hot paths that use asyncpg directly."""
    errors = [{"field": "request", "message": "a value is out of range or cannot be stored", "type": "data_error"}]
    return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return JSONResponse({"detail": "internal error"}, status_code=500)


def _body_framing(scope: Scope) -> tuple[bytes | None, bool]:
    """The request's Content-Length, and whether its body comes chunked."""
    declared, chunked = None, False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            declared = value
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


class BodySizeLimit:
    """Answers 413 for bodies over the limit, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_prefixes: Sequence[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefixes = tuple(exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_prefixes or ("\0",)):
            await self.app(scope, receive, send)
            return
        declared, chunked = _body_framing(scope)
        if not chunked and (declared is None or declared.isdigit()):
            # The server frames the body by Content-Length (none: no body), so the header alone decides.
            if declared is not None and int(declared) > self.max_bytes:
                await self._reject(send)
            else:
                await self.app(scope, receive, send)
            return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not rejected:
                    # Answer 413 now and tell the app the client went away, so it stops reading.
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


FIELD_ERRORS_SCHEMA = {
    "title": "FieldErrors",
    "type": "object",
    "required": ["detail", "errors"],
    "properties": {
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "description": "dotted path, e.g. items.0.unit_price"},
                    "message": {"type": "string"},
                    "type": {"type": ["string", "null"]},
                },
            },
        },
    },
}


def _document_field_errors(app: FastAPI) -> None:
    """Make the OpenAPI 422 schema describe the answer we actually send (errors named by field)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.get("components", {}).get("schemas", {})["HTTPValidationError"] = FIELD_ERRORS_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_service_app(
    *,
    title: str,
    settings: ServiceSettings,
    runtime: ServiceRuntime,
    routers: Sequence[APIRouter],
    max_body_bytes: int = 1_048_576,
    description: str = "",
    body_limit_exempt: Sequence[str] = (),  # streamed uploads (bulk import) check their own size
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, description=description, lifespan=lifespan, telemetry=NO_TELEMETRY)
    app.state.runtime = runtime
    app.state.settings = settings
    app.include_router(health)
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.exceptions.DataError, _asyncpg_bad_value)
    for unavailable in _ASYNCPG_UNAVAILABLE:
        app.add_exception_handler(unavailable, _asyncpg_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
    _document_field_errors(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, exempt_prefixes=body_limit_exempt)
    return app


def _settle_heap_after_startup(app: FastAPI) -> None:
    """Once the app has started (pools, connections), freeze what is alive out of the collector's way.

    The thresholds stay: a young collection of 100,000 objects would be a pause of milliseconds in
    some request, where the default 700 costs microseconds. Here and not in the lifespan, so the
    test process, which starts many apps, keeps an ordinary collector.
    """
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with started(app):
            settle_heap()
            yield

    app.router.lifespan_context = lifespan


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run the API. With api_processes > 1 it is one of that many processes sharing the port (SO_REUSEPORT)."""
    configure_logging(settings.service_name, settings.log_level)
    _settle_heap_after_startup(app)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    if settings.api_processes == 1:
        server.run()
        return
    # The kernel spreads new connections over the processes bound to the port: each an independent
    # process (its own pools and caches), started and restarted by whoever runs them (`make up`).
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((settings.host, settings.port))
    server.run(sockets=[listener])
