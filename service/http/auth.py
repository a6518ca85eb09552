"""Bearer keys: compared in constant time, never logged."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from normserve.service.errors import Unauthorized

__all__ = ["BearerKey"]


class BearerKey:
    """One configured key; ``check`` raises ``Unauthorized`` unless the header carries it."""

    def __init__(self, key: SecretStr, what: str) -> None:
        self._key = key.get_secret_value().encode()
        self._what = what

    def __repr__(self) -> str:
        return f"BearerKey({self._what}, ****)"

    def check(self, authorization: str | None) -> None:
        if not authorization:
            raise Unauthorized(f"{self._what} needs an 'Authorization: Bearer <key>' header")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(f"{self._what}: Authorization must be 'Bearer <key>'")
        if not hmac.compare_digest(token.strip().encode(), self._key):
            raise Unauthorized(f"{self._what}: wrong key")
