"""Bearer-token checks: one for the HTTP API, one for the OTLP receivers (separate settings).

An empty token turns the check off. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from opstrata.errors import Unauthenticated

__all__ = ["bearer_matches", "otlp_authenticator"]


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``Bearer <token>``."""
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def otlp_authenticator(token: str) -> Callable[[Mapping[str, str]], None] | None:
    """For the OTLP receivers: raises ``Unauthenticated`` (HTTP 401 / gRPC UNAUTHENTICATED)
    unless the request's ``authorization`` header or metadata carries the token; ``None`` (no
    check) for an empty token."""
    if not token:
        return None

    def authenticate(headers: Mapping[str, str]) -> None:
        value = headers.get("authorization")
        if not bearer_matches(value, token):
            what = "missing" if not value else "wrong"
            raise Unauthenticated(f"{what} bearer token (Authorization: Bearer <token>)")

    return authenticate
