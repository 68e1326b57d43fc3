"""Request-body size limits, enforced while the body arrives (before any parsing).

A declared Content-Length over the limit is refused at once; a chunked body is counted as it
streams in, and the moment it passes the limit the client gets a 413, whatever the route was
doing with the partial body. An HTTP/1.0 POST that declares no length gets a 411: HTTP/1.0 has
no other way to say where a body ends, so the server reads it as empty, and the route would
otherwise complain about a missing field instead of the missing header.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harken.api.errors import send_error
from harken.errors import FileTooLarge, HarkenError


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _body_length_unknown(scope):
            await send_error(send, _length_required(), close=True)
            return
        limit = self.limit_for(scope["path"])
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _send_413(send, limit)
                    return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                if not response_started:
                    response_started = True
                    await _send_413(send, limit)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await _send_413(send, limit)


class LengthRequired(HarkenError):
    status = 411
    type = "invalid_request_error"
    code = "length_required"


def _body_length_unknown(scope: Scope) -> bool:
    if scope.get("http_version") != "1.0" or scope.get("method") not in ("POST", "PUT", "PATCH"):
        return False
    names = {name for name, _ in scope.get("headers", ())}
    return b"content-length" not in names and b"transfer-encoding" not in names


def _length_required() -> LengthRequired:
    return LengthRequired(
        "The request has no Content-Length header: an HTTP/1.0 request must declare its body's "
        "length (or use HTTP/1.1), otherwise the body cannot be read."
    )


async def _send_413(send: Send, limit: int) -> None:
    error = FileTooLarge(
        f"The request body is larger than this server's limit of {limit / 1048576:.1f} MB."
    )
    await send_error(send, error, close=True)
