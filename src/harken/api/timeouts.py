"""Slow and vanishing clients: neither may hold the server's resources.

uvicorn has no timeout for reading a request body, so a client that trickles an upload a byte
at a time (slowloris) would hold its connection, its partial body and a place in the handler
forever. This middleware gives the body two deadlines: no gap between chunks longer than
`body_idle_timeout_seconds`, and the whole body within `body_timeout_seconds`. Past either the
client gets a 408 and the connection is closed.

Once the body is in, it watches for the client going away. Starlette stops a streaming response
when its client leaves, but a plain JSON response is computed to the end for nobody; here the
handler is cancelled instead, which cancels its transcription job and frees its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harken.api.errors import send_error
from harken.errors import HarkenError

log = logging.getLogger(__name__)


class RequestTimeout(HarkenError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ClientTimeoutMiddleware:
    def __init__(self, app: ASGIApp, *, idle_timeout: float, total_timeout: float) -> None:
        self.app = app
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.total_timeout
        body_done = asyncio.Event()
        timed_out: RequestTimeout | None = None
        response_started = False
        response_done = False
        departed = False

        async def timed_receive() -> Message:
            nonlocal timed_out
            if timed_out is not None:
                return {"type": "http.disconnect"}
            if body_done.is_set():
                return await receive()
            wait = min(self.idle_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except TimeoutError:
                timed_out = RequestTimeout(
                    "The request body arrived too slowly: send it within "
                    f"{self.total_timeout:g} s, with no pause over {self.idle_timeout:g} s."
                )
                log.info("request body timed out on %s", scope["path"])
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done.set()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, response_done
            if timed_out is not None:
                return  # the 408 below replaces whatever the route makes of a cut-off body
            if message["type"] == "http.response.start":
                response_started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response_done = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, timed_receive, guarded_send))

        async def watch_for_departure() -> None:
            nonlocal departed
            await body_done.wait()
            while not handler.done():
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not response_done:
                        departed = True
                        log.info("client left %s before the answer; cancelling", scope["path"])
                        handler.cancel()
                    return

        watcher = asyncio.ensure_future(watch_for_departure())
        try:
            await handler
        except asyncio.CancelledError:
            if not departed:
                raise  # cancelled from outside (server shutdown), not because the client left
        except Exception:
            if timed_out is None:
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if timed_out is not None and not response_started:
            await send_error(send, close=True, error=timed_out)
