"""uvicorn, as harken runs it: a connection layer that holds nothing for free, and a shutdown that
drains before it closes the port.

**Connections.** uvicorn cuts a kept-alive connection that idles between requests, but nothing
else at its level: a connection that never sends a byte, or sends its headers a byte a second
(slowloris), is held forever, and nothing caps how many are open. `ConnectionLimits` adds, per
connection, an idle timeout until the first byte, a deadline for the whole request head from
its first byte, and a cap on open connections (past it a connection gets a 503 and is closed).
Once a request's head is in, its body has the app's own timeouts (`api/timeouts.py`).

Malformed HTTP that h11 rejects before harken sees it (a NUL in a header, a bad chunk size, two
Content-Lengths, a 1 MB header) gets the contract's error body naming the problem, not uvicorn's
`text/plain "Invalid HTTP request received."`. These hooks rely on uvicorn's h11 protocol
(`H11Protocol`: `conn`, `handle_events`, `send_400_response`, `on_response_complete`), which is
why the server always runs on h11 and pyproject pins uvicorn's range; tests/test_hardening_http.py
exercises each hook. uvicorn's access log is off: it prints whole URLs, query string included,
and harken's own access line (`harken.access`) names only the route.

**Shutdown.** uvicorn, told to stop, closes its listening socket first and then waits for work in
progress. A client that connects in that instant (the kernel has already accepted the
connection) is dropped without an answer, and cannot tell whether its request was done. Here the
port stays open while admitted work finishes: new work gets a 503 in the contract's error body,
with `Connection: close`, and `/health` says 503, so a load balancer moves traffic away. Only
then does uvicorn's own shutdown run. A second Ctrl-C stops at once, as it does in uvicorn.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from harken.api.errors import send_error
from harken.config import Settings
from harken.errors import HarkenError, InvalidRequest, Overloaded
from harken.service.transcription import TranscriptionService

log = logging.getLogger(__name__)

# The largest request line plus headers h11 buffers before refusing (its default, 16 KiB).
MAX_HEAD_BYTES = 16 * 1024
# A WebSocket message this much over the largest event the app takes is refused by uvicorn.
_WS_SLACK = 1024 * 1024
# How long a connection over the cap may take to send the request it gets a 503 for.
_OVER_CAPACITY_GRACE = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout: float  # a new connection must send its first byte within this
    header_timeout: float  # a request's line and headers must arrive within this of its first byte
    max_connections: int  # open connections; the next one gets a 503 and is closed

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            idle_timeout=settings.connection_idle_timeout_seconds,
            header_timeout=settings.header_timeout_seconds,
            max_connections=settings.max_connections,
        )


class HeaderTimeout(HarkenError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class MalformedHttp(InvalidRequest):
    code = "invalid_http"


class HeadersTooLarge(HarkenError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class _RecordingConnection(h11.Connection):
    """h11's connection, keeping the error that made it refuse the request (uvicorn drops it)."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


# h11's messages, as sentences for the person who sent the request. h11's own text can quote
# the offending bytes (a header value may be a key), so it is never passed on as it is.
_H11_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("bad content-length", "The Content-Length header is not a whole number of bytes."),
    ("conflicting content-length", "The request has several Content-Length headers that differ."),
    ("missing mandatory host", "The request has no Host header, which HTTP/1.1 requires."),
    ("found multiple host", "The request has more than one Host header."),
    ("only transfer-encoding: chunked", "The only Transfer-Encoding this server reads is chunked."),
    ("multiple transfer-encoding", "The request has more than one Transfer-Encoding header."),
    ("illegal chunk", "The chunked body is malformed: a chunk size is not a hexadecimal number."),
    ("malformed chunk", "The chunked body is malformed: a chunk does not end with CRLF."),
    ("illegal header", "A header line is not valid HTTP: a bad name, or a NUL or bare CR."),
    ("continuation line", "A header line starts with whitespace (obsolete line folding)."),
    ("illegal request line", "The request line is not `METHOD /path HTTP/1.1`."),
    ("no request line", "The request line is not `METHOD /path HTTP/1.1`."),
    ("illegal method", "The request method holds characters HTTP does not allow."),
    ("illegal target", "The request target (the path) holds characters HTTP does not allow."),
)


def describe_http_error(exc: h11.RemoteProtocolError | None) -> HarkenError:
    """The contract's error for a request h11 refused."""
    if exc is not None and exc.error_status_hint == 431:
        return HeadersTooLarge(
            "The request line and headers are larger than this server's limit of "
            f"{MAX_HEAD_BYTES // 1024} KiB; put long data in the body."
        )
    reason = str(exc).lower() if exc is not None else ""
    for prefix, sentence in _H11_PROBLEMS:
        if reason.startswith(prefix):
            return MalformedHttp(f"The request is not valid HTTP/1.1. {sentence}")
    return MalformedHttp("The request is not valid HTTP/1.1.")


def raw_response(error: HarkenError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 response carrying the contract's error body, then `Connection: close`,
    for answers given outside h11's request cycle (before or instead of a request)."""
    body = json.dumps(error.body()).encode()
    phrase = http.HTTPStatus(error.status).phrase
    lines = [f"HTTP/1.1 {error.status} {phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        *(f"{name.lower()}: {value}".encode() for name, value in error.headers.items()),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _over_capacity_error(limit: int) -> Overloaded:
    return Overloaded(
        f"The server has its maximum of {limit} open connections; retry shortly.",
        code="too_many_connections",
        headers={"Retry-After": "1"},
    )


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with `ConnectionLimits` and contract-shaped refusals.

    One timer per connection watches the time before a request's head is complete: first the
    idle timeout (nothing sent yet; the connection is closed without a word), then, from the
    first byte of a head, the header timeout (a 408 in the contract's body, then close). While a
    request runs the timer is off; between requests uvicorn's keep-alive timeout applies.
    """

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = self._h11 = _RecordingConnection(h11.SERVER, MAX_HEAD_BYTES)
        # uvicorn turns its access log on whenever its logger has a handler; never here.
        self.access_log = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # the timer running is the header timeout, not the idle one

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[LimitedH11Protocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    # --- the connection's life
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # Answer its request (if it sends one at once) with a 503 instead of running it.
            _warn_over_capacity(self.limits.max_connections)
            self.app = _OverCapacity(self.limits.max_connections)
            self._arm(min(self.limits.idle_timeout, _OVER_CAPACITY_GRACE))
            return
        self._arm(self.limits.idle_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()  # a pipelined request's head may be waiting, incomplete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()
        super().handle_websocket_upgrade(event)

    # --- malformed requests
    def send_400_response(self, msg: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        error = describe_http_error(self._h11.last_error)
        log.info("malformed HTTP refused with %d %s", error.status, error.code)
        self.transport.write(raw_response(error, self.server_state.default_headers))
        self.transport.close()

    # --- the timer
    def _watch_head(self) -> None:
        if self.transport.is_closing():
            self._disarm()
        elif self.conn.their_state is not h11.IDLE:
            self._disarm()  # a request is under way: its body has the app's own timeouts
        elif self.conn.trailing_data[0] and not self._head_started:
            self._disarm()
            self._head_started = True
            self._arm(self.limits.header_timeout)
        elif not self.conn.trailing_data[0] and self._head_started:
            self._disarm()  # between requests: uvicorn's keep-alive timer

    def _arm(self, seconds: float) -> None:
        self._head_timer = self.loop.call_later(seconds, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_started = False

    def _head_timed_out(self) -> None:
        started = self._head_started
        self._head_timer = None
        self._head_started = False
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if started:
            log.info("connection closed: request headers incomplete after %g s",
                     self.limits.header_timeout)  # fmt: skip
            error = HeaderTimeout(
                "The request line and headers arrived too slowly: send them within "
                f"{self.limits.header_timeout:g} s."
            )
            self.transport.write(raw_response(error, self.server_state.default_headers))
        self.transport.close()


_refused = {"count": 0, "logged_at": -60.0}


def _warn_over_capacity(limit: int) -> None:
    """One warning a minute at most, with the count: a flood must not flood the log too."""
    _refused["count"] += 1
    now = time.monotonic()
    if now - _refused["logged_at"] >= 60:
        log.warning(
            "connections over the cap of %d: %d refused with a 503 since the last warning",
            limit,
            _refused["count"],
        )
        _refused.update(count=0, logged_at=now)


class _OverCapacity:
    """The app a connection over the cap runs instead of harken: a 503, then close."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send_error(send, _over_capacity_error(self.limit), close=True)


def server_config(app: FastAPI, settings: Settings, *, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration harken runs with: its protocol, limits and timeouts."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=LimitedH11Protocol.with_limits(ConnectionLimits.from_settings(settings)),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        # Live transcription (api/realtime.py): an event over the app's limit still arrives, to
        # be answered with an `error` event; far over it, the socket closes (code 1009).
        ws="websockets-sansio",
        ws_max_size=settings.realtime_max_event_bytes + _WS_SLACK,
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        access_log=False,  # it prints query strings; harken.access logs each request instead
        log_level=log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )


def build_server(app: FastAPI, settings: Settings, *, log_level: str = "info") -> DrainingServer:
    """The server `harken serve` runs: `server_config` with the draining shutdown."""
    _check_file_limit(settings.max_connections)
    config = server_config(app, settings, log_level=log_level)
    return DrainingServer(config, app.state.service, settings.shutdown_grace_seconds)


def _check_file_limit(max_connections: int) -> None:
    """Each connection is a file descriptor: a cap above the process's limit is never reached,
    and past the limit the kernel refuses connections with no answer at all."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "HARKEN_MAX_CONNECTIONS=%d needs about %d open files, but this process may open %d; "
            "raise the limit (ulimit -n, LimitNOFILE=) or lower the cap",
            max_connections,
            needed,
            soft,
        )


_SPARE_FILES = 64  # model files, logs, the listening socket, worker pipes


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: TranscriptionService, grace: float) -> None:
        super().__init__(config)
        self.service = service
        self.grace = grace

    async def main_loop(self) -> None:
        await super().main_loop()
        if self.force_exit:
            return
        log.info(
            "draining: new work is refused; waiting up to %g s for %d admitted request(s)",
            self.grace,
            self.service.scheduler.admitted,
        )
        drained = asyncio.create_task(self.service.drain(self.grace))
        while not drained.done():
            if self.force_exit:
                drained.cancel()
                return
            await self.on_tick(0)  # keeps the Date header fresh
            await asyncio.wait([drained], timeout=0.1)
