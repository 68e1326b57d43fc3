"""API keys: `api-key: KEY` (MiMo) or `Authorization: Bearer KEY` (OpenAI).

Checked twice: by `ApiKeyMiddleware` before the body is read (a stranger can't make the server
parse megabytes of JSON, nor learn from a 400 what a valid request looks like), and by the
`require_api_key` dependency on each protected route (so a route is safe on its own too).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from harken.api.errors import send_error
from harken.errors import AuthenticationFailed

# Everything under these needs a key when keys are set; /health and the web page stay open.
PROTECTED_PREFIXES = ("/v1/", "/metrics")


class ApiKeys:
    """The keys this server accepts (HARKEN_API_KEYS and the keys file); none: the API is open."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def valid(self, supplied: str) -> bool:
        """Constant-time comparison against every configured key."""
        candidate = supplied.encode()
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(key, candidate)
        return valid


def supplied_key(headers: Headers) -> str | None:
    key = headers.get("api-key")
    if key is not None:
        return key.strip()
    authorization = headers.get("authorization")
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def check_key(keys: ApiKeys, headers: Headers) -> None:
    """Raise AuthenticationFailed unless keys are off or a valid one was sent."""
    if not keys.required:
        return
    key = supplied_key(headers)
    # The messages never repeat what was sent: a key pasted in the wrong place stays private.
    if not key:
        raise AuthenticationFailed(
            "An API key is required: send `api-key: KEY` or `Authorization: Bearer KEY`."
        )
    if not keys.valid(key):
        raise AuthenticationFailed("The API key is not valid.")


async def require_api_key(request: Request) -> None:
    check_key(request.app.state.api_keys, request.headers)


class ApiKeyMiddleware:
    """Refuses protected paths without a valid key before the route reads a byte of the body."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            check_key(self.keys, Headers(scope=scope))
        except AuthenticationFailed as error:
            await send_error(send, error)
            return
        await self.app(scope, receive, send)
