"""Errors that reach a client, each with the HTTP status and the contract's type and code.

Any layer may raise these; the API turns them into the one error body of CONTRACT.md §4 and
adds what HTTP needs besides (`Retry-After`, `Connection: close`: `harken.api.errors`).
Messages are written for the person who has to fix the request: they name what is wrong and
never carry a stack trace, a key or a server path.
"""

from __future__ import annotations

from typing import Any


class HarkenError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        # Set only by the API layer for its own refusals; the service never speaks HTTP.
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(HarkenError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidAudio(InvalidRequest):
    code = "invalid_audio"


class UnsupportedLanguage(InvalidRequest):
    code = "unsupported_language"


class AuthenticationFailed(HarkenError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(HarkenError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class FileTooLarge(HarkenError):
    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


class AudioTooLong(FileTooLarge):
    code = "audio_too_long"


class RateLimited(HarkenError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a place is likely to free up


class DeadlineExceeded(HarkenError):
    """The request ran past the server's per-request deadline and was stopped."""

    status = 504
    type = "server_error"
    code = "deadline_exceeded"


class Overloaded(HarkenError):
    status = 503
    type = "server_error"
    code = "overloaded"


class ShuttingDown(Overloaded):
    """New work while the server drains: the client should go to another instance or retry."""

    def __init__(self, message: str = "The server is shutting down and takes no new work.") -> None:
        super().__init__(message)


class ServerError(HarkenError):
    status = 500
    type = "server_error"
    code = None


class UpstreamError(HarkenError):
    """A remote model answered with an error or an answer harken can't read (after retries)."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamUnavailable(HarkenError):
    """A remote model could not be reached, or stayed overloaded (after retries)."""

    status = 503
    type = "server_error"
    code = "upstream_unavailable"


class UpstreamTimeout(HarkenError):
    """A remote model did not answer in time (after retries)."""

    status = 504
    type = "server_error"
    code = "upstream_timeout"
