"""Ray Serve's proxy, speaking the contract: its own answers in harken's error body.

Ray's HTTP proxy answers some requests itself, in plain text: a 503 when every replica is full
and its router's queue too (`max_queued_requests`), a 503 while no replica is up yet, a 408 past
its request timeout, and, when the replica a request was on dies, nothing at all (the client
would get a bare 500 from the proxy's uvicorn). `ContractErrorsMiddleware` runs inside that
proxy (Ray loads it from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, see `api/ray_serve.py`) and
turns each of these into the contract's error body: 429 with `Retry-After` for backpressure,
503 for a lost or missing replica, a final SSE error event for a stream cut short. Harken's own
answers, which are always JSON or SSE, pass through untouched.

This module imports nothing from Ray, so the proxy's behaviour is testable without a cluster.
"""

from __future__ import annotations

import math

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harken.api.errors import send_error
from harken.api.sse import sse_error
from harken.errors import DeadlineExceeded, HarkenError, Overloaded, RateLimited

# Ray's plain-text refusals; harken's own errors are application/json.
_RAY_STATUSES = frozenset({408, 429, 500, 503})
_DEFAULT_RETRY_AFTER = 1

REPLICA_LOST = (
    "The replica serving this request stopped before it answered; retry the request "
    "(another replica takes it)."
)


def proxy_middlewares() -> list[Middleware]:
    """What Ray's proxy calls (by import path) for the middleware it wraps its app in."""
    return [Middleware(ContractErrorsMiddleware)]


def ray_refusal(status: int, body: bytes, retry_after: str | None) -> HarkenError:
    """The contract's error for one of Ray's own plain-text answers."""
    text = body.decode("utf-8", "replace")
    if status == 429 or (status == 503 and "backpressure" in text.lower()):
        seconds = _DEFAULT_RETRY_AFTER
        if retry_after and retry_after.strip().isdigit():
            seconds = max(1, int(retry_after.strip()))
        return RateLimited(
            "Every replica is busy and the cluster's queue is full; retry in "
            f"{seconds} s or add replicas.",
            retry_after=math.ceil(seconds),
        )
    if status == 408:
        return DeadlineExceeded("The request ran past the cluster's request timeout.")
    if status == 500:
        return Overloaded(REPLICA_LOST)
    return Overloaded("No replica can take this request yet; retry shortly.")


class ContractErrorsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = streaming = False
        held: Message | None = None  # a plain-text refusal of Ray's, replaced when its body comes

        async def checked_send(message: Message) -> None:
            nonlocal started, finished, streaming, held
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                content_type = headers.get(b"content-type", b"").decode("latin-1")
                if message["status"] in _RAY_STATUSES and content_type.startswith("text/plain"):
                    held = message
                    return
                started = True
                streaming = content_type.startswith("text/event-stream")
                # Ray's proxy adds the X-Request-ID that harken's replica already sent.
                message = {
                    **message,
                    "headers": list(dict.fromkeys(map(tuple, message["headers"]))),
                }
            elif message["type"] == "http.response.body" and held is not None:
                if message.get("more_body", False):
                    return
                headers = {k.lower(): v for k, v in held.get("headers", [])}
                retry_after = headers.get(b"retry-after", b"").decode("latin-1") or None
                error = ray_refusal(held["status"], message.get("body", b""), retry_after)
                held = None
                started = finished = True
                await send_error(send, error)
                return
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        await self.app(scope, receive, checked_send)
        if finished:
            return
        if not started:
            await send_error(send, Overloaded(REPLICA_LOST))
        elif streaming:
            # The stream was cut: end it with an error event, as a failure mid-stream does.
            await send(
                {
                    "type": "http.response.body",
                    "body": sse_error(Overloaded(REPLICA_LOST)),
                    "more_body": False,
                }
            )
