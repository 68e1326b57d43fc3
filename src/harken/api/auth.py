"""API keys: `api-key: KEY` (MiMo) or `Authorization: Bearer KEY` (OpenAI)."""

from __future__ import annotations

from fastapi import Request

from harken.errors import AuthenticationFailed
from harken.service.transcription import TranscriptionService


def supplied_key(request: Request) -> str | None:
    key = request.headers.get("api-key")
    if key is not None:
        return key.strip()
    authorization = request.headers.get("authorization")
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


async def require_api_key(request: Request) -> None:
    service: TranscriptionService = request.app.state.service
    if not service.auth_required:
        return
    key = supplied_key(request)
    if not key:
        raise AuthenticationFailed(
            "An API key is required: send `api-key: KEY` or `Authorization: Bearer KEY`."
        )
    if not service.key_is_valid(key):
        raise AuthenticationFailed("The API key is not valid.")
