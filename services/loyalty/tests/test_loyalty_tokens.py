"""The cache of verified customer tokens in front of /v1/me: never longer than the token is valid."""

from __future__ import annotations

import time

import jwt
from loyalty.api import VerifiedTokens

from shared.auth import CustomerPrincipal, CustomerTokenVerifier, issue_customer_token

SECRET = "token-cache-test-secret-0123456789abcdef"


def verified_tokens(max_entries: int = 10_000) -> VerifiedTokens:
    return VerifiedTokens(CustomerTokenVerifier(secret=SECRET, public_key=None), max_entries=max_entries)


def test_a_cached_token_is_refused_once_it_expires() -> None:
    tokens = verified_tokens()
    token = jwt.encode({"sub": "cus-1", "exp": int(time.time()) + 2}, SECRET, algorithm="HS256")
    assert tokens.verify(token) == CustomerPrincipal("cus-1")
    assert tokens.verify(token) == CustomerPrincipal("cus-1")  # from the cache
    time.sleep(max(0.0, jwt.decode(token, options={"verify_signature": False})["exp"] - time.time()) + 0.05)
    assert tokens.verify(token) is None


def test_bad_tokens_are_never_cached_and_forged_ones_never_hit() -> None:
    tokens = verified_tokens()
    good = issue_customer_token("cus-2", SECRET)
    forged = issue_customer_token("cus-2", "another-secret-0123456789abcdef0123")
    assert tokens.verify(forged) is None
    assert tokens.verify(good) == CustomerPrincipal("cus-2")
    assert tokens.verify(forged) is None
    assert tokens.verify(good[:-2] + "xx") is None


def test_the_cache_stays_bounded() -> None:
    tokens = verified_tokens(max_entries=3)
    for n in range(10):
        assert tokens.verify(issue_customer_token(f"cus-{n}", SECRET)) == CustomerPrincipal(f"cus-{n}")
        assert len(tokens) <= 3
