"""Optional bearer-token authentication for the inference routes.

With no keys configured every request passes. Otherwise the `Authorization: Bearer <key>` header
must match one of the keys; the comparison runs in constant time against every key
(`hmac.compare_digest`) so timing reveals neither a key nor which one matched. Keys are never
logged or echoed.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fewshot.api.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="An API key given to `fewshot serve --api-key`")


def key_matches(token: str, keys: list[bytes]) -> bool:
    """True when `token` equals one of `keys`; always compares against all of them."""
    candidate = token.encode("utf-8")
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


async def require_api_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """FastAPI dependency: raise 401 (in the route's format) unless the bearer token is valid.
    A coroutine (it never blocks), so FastAPI runs it on the event loop instead of sending every
    request through a worker thread."""
    keys: list[bytes] = request.app.state.fewshot.api_keys
    if not keys:
        return
    if credentials is None or not credentials.credentials:
        raise Unauthorized("Missing Authorization: Bearer header")
    if not key_matches(credentials.credentials, keys):
        raise Unauthorized()
