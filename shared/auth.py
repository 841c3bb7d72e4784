"""Authentication per the contract: scoped API keys (stored hashed) and customer JWTs."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.settings import ServiceSettings
from shared.tables import api_keys

ALL_SCOPES = (
    "ingest:write",
    "profiles:read",
    "segments:read",
    "segments:write",
    "loyalty:read",
    "loyalty:write",
    "feedback:write",
    "feedback:read",
    "admin",
)
DEV_KEY_ID = "dev"
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class ApiKeyPrincipal:
    key_id: str
    scopes: frozenset[str]
    rate_limit_per_second: int | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class CustomerPrincipal:
    customer_id: str


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> tuple[str, str]:
    """A new (key_id, key); the key embeds its id so it can be found and shown without the secret."""
    key_id = secrets.token_hex(6)
    return key_id, f"cx_{key_id}_{secrets.token_urlsafe(32)}"


_DEV_PRINCIPAL = ApiKeyPrincipal(DEV_KEY_ID, frozenset(ALL_SCOPES))


@dataclass
class ApiKeyVerifier:
    """Finds a key by its hash: the configured dev key, then the service's api_keys table (cached)."""

    sessionmaker: async_sessionmaker[AsyncSession] | None
    dev_key: str | None
    cache_seconds: float = 30.0
    _cache: dict[str, tuple[float, ApiKeyPrincipal | None]] = field(default_factory=dict)

    async def verify(self, key: str) -> ApiKeyPrincipal | None:
        if self.dev_key and hmac.compare_digest(key.encode(), self.dev_key.encode()):
            return _DEV_PRINCIPAL
        key_hash = hash_api_key(key)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        principal = await self._load(key_hash)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_hash] = (now + self.cache_seconds, principal)
        return principal

    async def _load(self, key_hash: str) -> ApiKeyPrincipal | None:
        if self.sessionmaker is None:
            return None
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(api_keys.c.key_id, api_keys.c.scopes, api_keys.c.rate_limit_per_second)
                    .where(api_keys.c.key_hash == key_hash)
                    .where(api_keys.c.revoked_at.is_(None))
                    .where((api_keys.c.expires_at.is_(None)) | (api_keys.c.expires_at > func.now()))
                )
            ).first()
        if row is None:
            return None
        return ApiKeyPrincipal(row.key_id, frozenset(row.scopes), row.rate_limit_per_second)


@dataclass
class CustomerTokenVerifier:
    """Customer JWTs: HS256 with a shared secret and/or RS256 with a public key.

    A mobile app sends the same token on every call until it expires, and checking a signature costs
    more than the rest of a balance read: tokens that verified are remembered until their `exp`.
    """

    secret: str | None
    public_key: str | None
    audience: str | None = None
    max_remembered: int = 50_000
    _verified: dict[str, tuple[float, CustomerPrincipal]] = field(default_factory=dict)

    def verify(self, token: str) -> CustomerPrincipal | None:
        remembered = self._verified.get(token)
        if remembered is not None:
            if time.time() < remembered[0]:
                return remembered[1]
            del self._verified[token]
        checked = self._check(token)
        if checked is None:
            return None
        expires_at, principal = checked
        if len(self._verified) >= self.max_remembered:
            self._verified.clear()
        self._verified[token] = (expires_at, principal)
        return principal

    def _check(self, token: str) -> tuple[float, CustomerPrincipal] | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        algorithm = header.get("alg")
        key = {"HS256": self.secret, "RS256": self.public_key}.get(str(algorithm))
        if not key:
            return None  # Covers alg "none" and any algorithm not configured.
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                audience=self.audience,
                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError:
            return None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            return None
        return float(claims["exp"]), CustomerPrincipal(subject)


def issue_customer_token(customer_id: str, secret: str, *, ttl_seconds: int = 86_400) -> str:
    """Development helper: an HS256 customer token (production tokens come from the retailer's login)."""
    now = int(time.time())
    return jwt.encode({"sub": customer_id, "iat": now, "exp": now + ttl_seconds}, secret, algorithm="HS256")


def make_verifiers(
    settings: ServiceSettings, sessionmaker: async_sessionmaker[AsyncSession] | None
) -> tuple[ApiKeyVerifier, CustomerTokenVerifier]:
    return (
        ApiKeyVerifier(sessionmaker, settings.dev_api_key, settings.api_key_cache_seconds),
        CustomerTokenVerifier(settings.jwt_secret, settings.jwt_public_key, settings.jwt_audience),
    )


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer credentials", _UNAUTHORIZED_HEADERS)
    return credentials.strip()


@dataclass
class RateLimiter:
    """Token bucket per API key, per process: a burst of one second's allowance, then the steady rate."""

    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def retry_after(self, key_id: str, per_second: float) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (max(1.0, per_second), now))
        tokens = min(max(1.0, per_second), tokens + (now - last) * per_second)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / per_second


_rate_limiter = RateLimiter()


def _enforce_rate_limit(principal: ApiKeyPrincipal, *, api_processes: int) -> None:
    if not principal.rate_limit_per_second:
        return
    # The kernel spreads connections over the API processes: each allows its share of the key's rate.
    share = principal.rate_limit_per_second / max(1, api_processes)
    wait = _rate_limiter.retry_after(principal.key_id, share)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, "rate limit exceeded", {"Retry-After": str(max(1, math.ceil(wait)))}
        )


def require_scope(scope: str) -> Callable[[Request], Awaitable[ApiKeyPrincipal]]:
    """Dependency: a valid API key that carries `scope` (401 if missing or bad, 403 if lacking)."""

    async def dependency(request: Request) -> ApiKeyPrincipal:
        verifier: ApiKeyVerifier = request.app.state.runtime.api_keys
        principal = await verifier.verify(_bearer(request))
        if principal is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", _UNAUTHORIZED_HEADERS)
        if not principal.allows(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"API key lacks scope {scope}")
        _enforce_rate_limit(principal, api_processes=request.app.state.settings.api_processes)
        request.state.principal = principal
        return principal

    return dependency


async def current_customer(request: Request) -> CustomerPrincipal:
    """Dependency for /v1/me/...: the customer named by a valid customer token."""
    verifier: CustomerTokenVerifier = request.app.state.runtime.customer_tokens
    principal = verifier.verify(_bearer(request))
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid customer token", _UNAUTHORIZED_HEADERS)
    return principal


CustomerDep = Annotated[CustomerPrincipal, Depends(current_customer)]
